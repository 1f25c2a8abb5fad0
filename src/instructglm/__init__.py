"""InstructGLM: offline-first, bilingual instruction tuning for causal language models.

Each CLI verb is a plain function with a config dataclass in the subpackage of the same name:

    convert  -> instructglm.convert.convert_files     tokenize -> instructglm.tokenize.tokenize_file
    train    -> instructglm.train.train               infer    -> instructglm.infer.infer
    chat     -> instructglm.chat.chat                 eval     -> instructglm.eval.evaluate
    report   -> instructglm.report.write_report       merge    -> instructglm.merge.merge
    export   -> instructglm.export.export             serve    -> instructglm.serve.serve
    demo     -> instructglm.demo.run_demo             models   -> instructglm.load_model / load_tokenizer

The names below are re-exported here and imported on first use, so ``import instructglm`` stays light
(converting data needs no torch). Functions named like their subpackage (``train``, ``infer``, ...)
are not re-exported: the subpackage attribute would shadow them.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "convert_files": "convert", "ConvertConfig": "convert",
    "tokenize_file": "tokenize", "TokenizeConfig": "tokenize",
    "TrainConfig": "train",
    "InferConfig": "infer",
    "ChatConfig": "chat",
    "evaluate": "eval", "EvalConfig": "eval",
    "write_report": "report", "ReportConfig": "report",
    "MergeConfig": "merge",
    "ExportConfig": "export",
    "ServeConfig": "serve",
    "run_demo": "demo", "DemoConfig": "demo",
    "load_model": "models", "load_tokenizer": "models", "resolve_model": "models",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"instructglm.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'instructglm' has no attribute {name!r}")
