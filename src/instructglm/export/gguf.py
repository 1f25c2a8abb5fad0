"""``export --format gguf``: a GGUF file for llama.cpp (and Ollama), written with the ``gguf`` package.

Supported architectures (transformers ``model_type`` -> GGUF architecture):

* ``llama``, ``mistral`` -> ``llama``. llama.cpp's ``llama`` architecture rotates interleaved pairs
  of a head's dimensions, transformers rotates its two halves; the rows of ``q_proj``/``k_proj``
  are permuted so that both compute the same attention (the same permutation llama.cpp's own
  converter applies).
* ``qwen2`` -> ``qwen2`` (half rotation in llama.cpp too: no permutation; Q/K/V biases kept).
* ``gemma3_text`` -> ``gemma3``. Gemma's RMSNorm scales by ``1 + weight``; llama.cpp scales by the
  stored weight, so 1 is added to every norm weight.
* ``glm`` -> ``chatglm``: ChatGLM2-6B, ChatGLM3-6B and GLM-4-9B-chat, which InstructGLM loads as
  transformers' ``glm`` model (:mod:`instructglm.models.chatglm`), whether the user's directory is in
  their original layout (converted, cached) or the native one. Both rotate interleaved pairs of the
  first ``partial_rotary_factor`` of each head (``rope.dimension_count``), so no permutation; Q/K/V are
  written apart with their biases, ``gate_up_proj`` is llama.cpp's fused ``ffn_up`` as it is.
  ChatGLM-6B (v1) has no llama.cpp architecture and is refused in one line.

Tensor names come from ``gguf.get_tensor_name_map`` (``token_embd``, ``blk.N.attn_q``, ...,
``output_norm``, ``output``; ``output`` is left out when the embeddings are tied). Weights are
stored as f16 (norms and other 1-D tensors stay f32) or Q8_0 (2-D weights whose rows split into
32-value blocks). The tokenizer goes in as GGUF metadata (:mod:`instructglm.export.vocab`), with the
chat template of the training template. An Ollama ``Modelfile`` is written next to the GGUF file.
Neither replaces an existing file unless ``--force`` is given.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from instructglm.config import opt
from instructglm.errors import UserError
from instructglm.files import atomic_file
from instructglm.runinfo import RunInfo, adapter_info, choose_template

log = logging.getLogger(__name__)

ARCHS = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "gemma3_text": "GEMMA3", "glm": "CHATGLM"}


@dataclass
class ExportConfig:
    output: str = opt(help="the .gguf file to write (an Ollama Modelfile is written next to it)", aliases=("-o",))
    model: str | None = opt(None, help="model to export; default: the first adapter's base model")
    adapter: list[str] = opt([], help="trained output directories to merge first (comma-separated, in order)")
    format: Literal["gguf"] = opt("gguf", help="output format")
    quant: Literal["f16", "q8_0"] = opt("f16", help="weight type: f16, or q8_0 (8-bit blocks of 32)")
    template: str | None = opt(None, help="prompt template for the chat template and Modelfile; "
                               "default: the adapter's, else the ChatGLM family's own, else alpaca")
    force: bool = opt(False, help="replace an existing output file and the Modelfile next to it")

    def validate(self) -> None:
        if not self.model and not self.adapter:
            raise UserError("export: give --model, --adapter or both")
        if Path(self.output).suffix != ".gguf":
            raise UserError(f"-o {self.output}: the output file name must end in .gguf")


def export(cfg: ExportConfig) -> dict:
    from instructglm.export.templates import modelfile
    from instructglm.models.loading import load_tokenizer

    out = Path(cfg.output)
    mf = out.parent / "Modelfile"
    if out.is_dir():
        raise UserError(f"-o {out}: is a directory; give a .gguf file name")
    refuse_existing(out, mf, cfg.force)
    refuse_chatglm_v1(cfg.model or adapter_info(cfg.adapter[0]).base_model)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Merged weights exist only while the GGUF file is written (beside it: same disk, large files).
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp-", dir=out.parent) as scratch:
        path, source, trained = _source_model(cfg, Path(scratch))
        tokenizer = load_tokenizer(path)
        requested = cfg.template or (None if trained else family_template(tokenizer))
        template = choose_template(requested, {source: trained})
        mf_text = modelfile(out.name, template, tokenizer.eos_token or "", tokenizer)  # an unusable template fails now
        with atomic_file(out, "wb") as f:
            stats = write_gguf(path, f, cfg.quant, template, tokenizer, name=out.stem)
    with atomic_file(mf) as f:
        f.write(mf_text)
    log.info("wrote %s (%d tensors, %s) and %s", out, stats["tensors"], cfg.quant, mf)
    return {"output": str(out), "modelfile": str(mf), "quant": cfg.quant, "template": template,
            "size_mb": out.stat().st_size / 2**20, **stats}


def refuse_existing(out: Path, modelfile: Path, force: bool) -> None:
    """Neither the GGUF file nor the Modelfile next to it is replaced without ``--force``."""
    if force:
        return
    if out.exists():
        raise UserError(f"-o {out}: the file exists; pass --force to replace it (and the Modelfile next to it)")
    if modelfile.exists():
        raise UserError(f"{modelfile}: exists (export writes the Modelfile next to -o {out.name}); pass --force "
                        f"to replace it, or export into another directory")


def refuse_chatglm_v1(spec: str | None) -> None:
    """One clear line for ChatGLM-6B (v1), before any merging (read from config.json only)."""
    from instructglm.models.chatglm import is_chatglm_v1_dir

    path = Path(str(spec or ""))
    if path.is_dir() and is_chatglm_v1_dir(path):
        raise UserError(f"{spec}: ChatGLM-6B (v1) cannot be exported to GGUF: llama.cpp has no architecture "
                        f"for it (ChatGLM2-6B, ChatGLM3-6B and GLM-4 can); use 'instructglm merge' for a "
                        f"merged model directory")


def family_template(tokenizer) -> str | None:
    """``chatglm2``, ``chatglm3`` or ``glm4`` for the tokenizer InstructGLM converted from such a
    checkpoint (told by the chat template the conversion gave it), else None."""
    from instructglm.models.chatglm import tokenizers as glm

    families = {glm.CHATGLM2_TEMPLATE: "chatglm2", glm.CHATGLM3_TEMPLATE: "chatglm3", glm.GLM4_TEMPLATE: "glm4"}
    return families.get(getattr(tokenizer, "chat_template", None) or "")


def _source_model(cfg: ExportConfig, scratch: Path) -> tuple[str, str, str | None]:
    """(model directory to export, what the user named, the template it was trained with)."""
    from instructglm.merge.merge import MergeConfig, merge
    from instructglm.models.loading import resolve_model

    if cfg.adapter:  # merge first, with all of merge's checks; transformers' layout is what is exported
        result = merge(MergeConfig(adapter=list(cfg.adapter), output=str(scratch / "merged"), model=cfg.model,
                                   dtype="fp32", layout="native"))
        return result["output"], ",".join(cfg.adapter), result["template"]
    path = resolve_model(cfg.model)
    # a ChatGLM checkpoint in its original layout resolves to its cached conversion: the run info
    # (e.g. of a merged model) stays in the directory the user named
    named = Path(str(cfg.model))
    info = (RunInfo.load(named) if named.is_dir() else None) or (RunInfo.load(path) if Path(path).is_dir() else None)
    return path, str(cfg.model), info.template if info else None


def _rope_theta(config, kind: str = "full_attention") -> float:
    theta = getattr(config, "rope_theta", None)
    params = getattr(config, "rope_parameters", None) or {}
    if theta is None and isinstance(params, dict):
        theta = params.get("rope_theta") or (params.get(kind) or {}).get("rope_theta")
    return float(theta or 10000.0)


def _rope_scaling(config, kind: str = "full_attention") -> dict:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(params, dict) and isinstance(params.get(kind), dict):
        params = params[kind]
    return params if isinstance(params, dict) else {}


def permute_qk(w, n_head: int):
    """Rows of a q/k projection reordered from half rotation (transformers) to interleaved pairs
    (llama.cpp's ``llama``): within each head, rows (i, i + d/2) become (2i, 2i + 1)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model_path: str, fout: BinaryIO, quant: str, template: str, tokenizer=None, name: str = "model") -> dict:
    """Write the model in ``model_path`` as GGUF into the open binary file ``fout``; return what was written."""
    import gguf
    from gguf.gguf_writer import WriterState
    from transformers import AutoConfig

    from instructglm.export.templates import chat_template
    from instructglm.export.vocab import add_tokenizer
    from instructglm.models.loading import load_model, load_tokenizer

    config = AutoConfig.from_pretrained(model_path)
    model_type = getattr(config, "model_type", "?")
    if model_type not in ARCHS:
        raise UserError(f"{model_path}/config.json: model_type '{model_type}' cannot be exported to GGUF yet "
                        f"(supported: {', '.join(ARCHS)})")
    arch = getattr(gguf.MODEL_ARCH, ARCHS[model_type])
    tokenizer = tokenizer or load_tokenizer(model_path)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hparams(writer, config, model_path)
    jinja = chat_template(template, tokenizer) or getattr(tokenizer, "chat_template", None)
    vocab = add_tokenizer(writer, tokenizer, config, jinja, model_path)
    writer.add_vocab_size(vocab)
    model = load_model(model_path).eval()
    written = _add_tensors(writer, model, config, arch, quant, model_path)
    del model
    # The writer opens files by path; ours is the caller's (atomic) temporary, handed over as its output.
    writer.fout, writer.state = [fout], WriterState.EMPTY
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    return {"arch": writer.arch, "tensors": written, "vocab_size": vocab, "eos_token": tokenizer.eos_token or ""}


def _head_counts(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dimension)."""
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    return n_head, n_kv, getattr(config, "head_dim", None) or config.hidden_size // n_head


def _add_hparams(writer, config, model_path: str) -> None:
    """Shape, attention and RoPE settings of the architecture."""
    import gguf

    n_head, n_kv, head_dim = _head_counts(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    gemma3 = config.model_type == "gemma3_text"
    if head_dim * n_head != config.hidden_size or gemma3:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if writer.arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    if writer.arch == "chatglm":
        _chatglm_hparams(writer, config, model_path)
    scaling = _rope_scaling(config)
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind not in (None, "default"):
        raise UserError(f"{model_path}/config.json: rope scaling '{kind}' is not supported by this exporter")
    if gemma3:
        writer.add_sliding_window(config.sliding_window)
        if getattr(config, "final_logit_softcapping", None):
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
        if getattr(config, "attn_logit_softcapping", None):
            writer.add_attn_logit_softcapping(config.attn_logit_softcapping)


def _chatglm_hparams(writer, config, model_path: str) -> None:
    """What llama.cpp's ``chatglm`` graph needs beyond the common keys: the rotated share of each head."""
    n_head, _, head_dim = _head_counts(config)
    if n_head * head_dim != config.hidden_size:
        raise UserError(f"{model_path}/config.json: {n_head} heads of {head_dim} do not add up to hidden_size "
                        f"{config.hidden_size}, which llama.cpp's 'chatglm' architecture requires")
    params = getattr(config, "rope_parameters", None) or {}
    factor = params.get("partial_rotary_factor") if isinstance(params, dict) else None
    factor = factor or getattr(config, "partial_rotary_factor", None) or 0.5
    writer.add_rope_dimension_count(int(head_dim * factor))


def _gguf_tensor(hf_name: str, tensor, config, arch_name: str):
    """A weight as llama.cpp expects it: Q/K rows permuted for the ``llama`` RoPE, Gemma norms shifted."""
    n_head, n_kv, _ = _head_counts(config)
    data = tensor.detach().float().numpy()
    if arch_name == "llama" and hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        data = permute_qk(data, n_head)
    elif arch_name == "llama" and hf_name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        data = permute_qk(data, n_kv)
    if config.model_type == "gemma3_text" and hf_name.endswith("norm.weight"):
        data = data + 1.0
    return data


def _add_tensors(writer, model, config, arch, quant: str, model_path: str) -> int:
    """Every weight under its GGUF name, f32 (1-D), f16 or Q8_0; returns how many."""
    import gguf
    import numpy as np

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    written = 0
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"{model_path}: tensor '{hf_name}' has no GGUF name for the {writer.arch} architecture")
        data = _gguf_tensor(hf_name, tensor, config, writer.arch)
        if data.ndim == 1:
            writer.add_tensor(name, data.astype(np.float32))
        elif quant == "q8_0" and data.shape[-1] % 32 == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data.astype(np.float16))
        written += 1
    return written
