"""InstructGLM: offline-first, bilingual instruction tuning for causal language models.

The pipeline is a set of plain functions, one per stage, that the CLI (``instructglm``) maps
subcommands onto:

    convert  -> instructglm.data.convert.convert_files
    tokenize -> instructglm.data.tokenize.tokenize_file
    train    -> instructglm.train.trainer.train
    infer    -> instructglm.infer.generate.infer
    merge    -> instructglm.merge.merge.merge
    demo     -> instructglm.demo.run_demo
"""

__version__ = "0.1.0"
