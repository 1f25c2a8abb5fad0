"""``export --format gguf``: a GGUF file for llama.cpp (and Ollama), written with the ``gguf`` package.

Supported architectures (transformers ``model_type`` -> GGUF architecture):

* ``llama``, ``mistral`` -> ``llama``. llama.cpp's ``llama`` architecture rotates interleaved pairs
  of a head's dimensions, transformers rotates its two halves; the rows of ``q_proj``/``k_proj``
  are permuted so that both compute the same attention (the same permutation llama.cpp's own
  converter applies).
* ``qwen2`` -> ``qwen2`` (half rotation in llama.cpp too: no permutation; Q/K/V biases kept).
* ``gemma3_text`` -> ``gemma3``. Gemma's RMSNorm scales by ``1 + weight``; llama.cpp scales by the
  stored weight, so 1 is added to every norm weight.

Tensor names come from ``gguf.get_tensor_name_map`` (``token_embd``, ``blk.N.attn_q``, ...,
``output_norm``, ``output``; ``output`` is left out when the embeddings are tied). Weights are
stored as f16 (norms and other 1-D tensors stay f32) or Q8_0 (2-D weights whose rows split into
32-value blocks). The tokenizer goes in as GGUF metadata: tokens, token types, merges (byte-level
BPE, ``tokenizer.ggml.model = gpt2``) or scores (SentencePiece-style BPE with byte fallback,
``llama``), the BOS/EOS/PAD ids and the chat template of the training template. An Ollama
``Modelfile`` is written next to the GGUF file.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from instructglm.config import opt
from instructglm.errors import UserError
from instructglm.files import atomic_file
from instructglm.runinfo import RunInfo, adapter_info, choose_template

log = logging.getLogger(__name__)

ARCHS = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "gemma3_text": "GEMMA3"}

# Pre-tokenizer split patterns llama.cpp knows by name (its tokenizer.ggml.pre values).
_PRE_PATTERNS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
}


@dataclass
class ExportConfig:
    output: str = opt(help="the .gguf file to write (an Ollama Modelfile is written next to it)", aliases=("-o",))
    model: str | None = opt(None, help="model to export; default: the first adapter's base model")
    adapter: list[str] = opt([], help="trained output directories to merge first (comma-separated, in order)")
    format: Literal["gguf"] = opt("gguf", help="output format")
    quant: Literal["f16", "q8_0"] = opt("f16", help="weight type: f16, or q8_0 (8-bit blocks of 32)")
    template: str | None = opt(None, help="prompt template for the chat template and Modelfile; "
                               "default: the adapter's, else alpaca")

    def validate(self) -> None:
        if not self.model and not self.adapter:
            raise UserError("export: give --model, --adapter or both")
        if Path(self.output).suffix != ".gguf":
            raise UserError(f"-o {self.output}: the output file name must end in .gguf")


def export(cfg: ExportConfig) -> dict:
    from instructglm.export.templates import modelfile
    from instructglm.models.loading import load_tokenizer

    out = Path(cfg.output)
    if out.is_dir():
        raise UserError(f"-o {out}: is a directory; give a .gguf file name")
    refuse_chatglm(cfg.model or adapter_info(cfg.adapter[0]).base_model)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Merged weights exist only while the GGUF file is written (beside it: same disk, large files).
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp-", dir=out.parent) as scratch:
        path, source, trained = _source_model(cfg, Path(scratch))
        template = choose_template(cfg.template, {source: trained})
        tokenizer = load_tokenizer(path)
        mf_text = modelfile(out.name, template, tokenizer.eos_token or "", tokenizer)  # an unusable template fails now
        with atomic_file(out, "wb") as f:
            stats = write_gguf(path, f, cfg.quant, template, tokenizer, name=out.stem)
    mf = out.parent / "Modelfile"
    with atomic_file(mf) as f:
        f.write(mf_text)
    log.info("wrote %s (%d tensors, %s) and %s", out, stats["tensors"], cfg.quant, mf)
    return {"output": str(out), "modelfile": str(mf), "quant": cfg.quant, "template": template,
            "size_mb": out.stat().st_size / 2**20, **stats}


def refuse_chatglm(spec: str | None) -> None:
    """One clear line for the ChatGLM family, before any merging (read from config.json only)."""
    from instructglm.models.chatglm import chatglm_generation, chatglm_source, is_chatglm_v1_dir

    path = Path(str(spec or ""))
    if not path.is_dir():
        return
    if is_chatglm_v1_dir(path):
        raise UserError(f"{spec}: ChatGLM-6B (v1) cannot be exported to GGUF: llama.cpp has no architecture "
                        f"for it; use 'instructglm merge' for a merged model directory")
    source = chatglm_source(path)
    generation = source["generation"] if source else chatglm_generation(path)
    if generation:
        family = {2: "ChatGLM2-6B", 3: "ChatGLM3-6B", 4: "GLM-4"}.get(generation, "ChatGLM")
        raise UserError(f"{spec}: GGUF export of {family} (llama.cpp's 'chatglm' architecture) is not "
                        f"implemented yet; use 'instructglm merge' for a merged model directory")


def _source_model(cfg: ExportConfig, scratch: Path) -> tuple[str, str, str | None]:
    """(model directory to export, what the user named, the template it was trained with)."""
    from instructglm.merge.merge import MergeConfig, merge
    from instructglm.models.loading import resolve_model

    if cfg.adapter:  # merge first, with all of merge's checks
        result = merge(MergeConfig(adapter=list(cfg.adapter), output=str(scratch / "merged"), model=cfg.model,
                                   dtype="fp32"))
        return result["output"], ",".join(cfg.adapter), result["template"]
    path = resolve_model(cfg.model)
    info = RunInfo.load(path) if Path(path).is_dir() else None
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
    vocab = _add_tokenizer(writer, tokenizer, config, jinja, model_path)
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


def _add_tokenizer(writer, tokenizer, config, template_text: str | None, model_path: str) -> int:
    """Tokenizer metadata; returns the vocabulary size written (padded to the embedding rows)."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{model_path}: only fast (tokenizer.json) tokenizers can be exported to GGUF")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"{model_path}/tokenizer.json: a {model.get('type')} tokenizer cannot be exported to GGUF "
                        f"yet (BPE only)")
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" in json.dumps(spec.get("decoder"))
    if not byte_level and not model.get("byte_fallback"):
        raise UserError(f"{model_path}/tokenizer.json: a BPE tokenizer without byte-level pre-tokenization or "
                        f"byte fallback cannot be exported to GGUF")
    if len(tokenizer) > config.vocab_size:
        raise UserError(f"{model_path}: the tokenizer has {len(tokenizer)} tokens but the model only "
                        f"{config.vocab_size} embedding rows (config.json vocab_size)")
    n = config.vocab_size
    id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    TT = gguf.TokenType
    tokens, types = [], []
    for i in range(n):
        if i not in id_to_token:
            tokens.append(f"[PAD{i}]")
            types.append(TT.UNUSED)
        elif i in added:
            tokens.append(added[i]["content"])
            types.append(TT.CONTROL if added[i].get("special") else TT.USER_DEFINED)
        else:
            tok = id_to_token[i]
            tokens.append(tok)
            types.append(TT.BYTE if not byte_level and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", tok) else TT.NORMAL)
    if byte_level:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_name(spec.get("pre_tokenizer")))
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        writer.add_token_merges(merges)
    else:  # SentencePiece-style BPE: llama.cpp's SPM tokenizer merges by score; earlier ids rank higher
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores([-float(i) if t == TT.NORMAL else 0.0 for i, t in enumerate(types)])
        writer.add_add_space_prefix("Prepend" in json.dumps(spec.get("normalizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    for key, adder in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                       ("pad_token_id", writer.add_pad_token_id), ("unk_token_id", writer.add_unk_token_id)):
        value = getattr(tokenizer, key, None)
        if value is not None:
            adder(int(value))
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id)
    if template_text:
        writer.add_chat_template(template_text)
    return n


def _pre_name(pre_tokenizer) -> str:
    """llama.cpp's name for a byte-level pre-tokenizer: plain GPT-2 ByteLevel, or a known split regex."""
    if not pre_tokenizer:
        return "default"
    if pre_tokenizer.get("type") == "ByteLevel" and pre_tokenizer.get("use_regex", True):
        return "gpt-2"
    text = json.dumps(pre_tokenizer)
    for pattern, name in _PRE_PATTERNS.items():
        if json.dumps(pattern)[1:-1] in text:
            return name
    log.warning("unknown pre-tokenizer; llama.cpp will use its default split rules, which may tokenize "
                "some text differently")
    return "default"
