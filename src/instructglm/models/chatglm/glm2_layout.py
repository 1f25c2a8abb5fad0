"""How a ChatGLM2/3 or GLM-4 remote-code checkpoint maps onto transformers' native ``glm`` model, both ways.

How the remote code maps onto :class:`transformers.GlmConfig` (verified numerically against the
original code in ``tests/models/test_chatglm2.py``):

* attention: ``query_key_value`` is ``[q: heads*kv_channels | k: groups*kv_channels | v: groups*kv_channels]``
  along the output dim -> ``q_proj``/``k_proj``/``v_proj``; ``head_dim = kv_channels``,
  ``num_key_value_heads = multi_query_group_num`` (query head h reads group h // (heads/groups), which is
  transformers' ``repeat_kv``); ``attention_bias = add_qkv_bias`` (q/k/v only; ``dense`` has no bias).
  ``apply_query_key_layer_scaling`` divides the scores by the layer number and multiplies them back
  before the softmax: the net scale is ``1/sqrt(head_dim)``, as in GLM.
* rotary: the remote ``RotaryEmbedding(kv_channels // 2)`` rotates the first ``kv_channels/2`` channels of
  each head as interleaved pairs ``(x[2i], x[2i+1])`` with ``theta_i = base^(-2i / (kv_channels/2))`` and
  ``base = 10000 * rope_ratio`` (``rope_ratio`` absent, as in ChatGLM2-6B, means 1); the other half passes
  through. That is GLM's rotary with ``partial_rotary_factor = 0.5`` and ``rope_theta = 10000 * rope_ratio``.
  ``original_rope`` is stored by the remote code but never read in its forward pass, so it is ignored.
  The ``rotary_pos_emb.inv_freq`` buffer is derived data (always base 10000) and is dropped.
* MLP: ``dense_h_to_4h`` is ``[gate | up]`` and the activation ``silu(gate) * up`` — GLM's ``gate_up_proj``
  as is. ``dense_4h_to_h`` is ``down_proj``.
* norms: ``input_layernorm``, ``post_attention_layernorm``, ``final_layernorm`` are RMSNorm with
  ``layernorm_epsilon`` -> ``rms_norm_eps``. The output layer is untied (``output_layer`` -> ``lm_head``).

Configurations the native model cannot express are refused with a :class:`UserError` rather than
converted wrongly: LayerNorm instead of RMSNorm, residual after the norm, biases on ``dense``/MLP,
P-tuning prefixes, quantized (int4/int8) weights, no final norm, non-MQA attention and GLM-4V's
vision tower.
"""

from __future__ import annotations

import re
from typing import Mapping

from instructglm.errors import UserError

_LAYER = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
_NATIVE_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# original name inside a layer -> native name inside a layer (the q/k/v split is handled apart)
_LAYER_NAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
_INV_FREQ = "transformer.rotary_pos_emb.inv_freq"


def _check_supported(cfg: dict, where: str) -> None:
    problems = []
    if not cfg.get("rmsnorm", True):
        problems.append("rmsnorm=false (LayerNorm)")
    if cfg.get("apply_residual_connection_post_layernorm", False):
        problems.append("apply_residual_connection_post_layernorm=true")
    if not cfg.get("post_layer_norm", True):
        problems.append("post_layer_norm=false")
    if cfg.get("add_bias_linear", False):
        problems.append("add_bias_linear=true (biases on dense/MLP)")
    if not cfg.get("multi_query_attention", False):
        problems.append("multi_query_attention=false")
    if cfg.get("pre_seq_len") is not None:
        problems.append("pre_seq_len (P-tuning prefix encoder)")
    if cfg.get("vision_config"):
        problems.append("vision tower (GLM-4V)")
    if cfg.get("quantization_bit"):
        problems.append(f"quantization_bit={cfg['quantization_bit']} (quantized weights)")
    if cfg.get("num_attention_heads", 1) % max(1, cfg.get("multi_query_group_num", 1)):
        problems.append("num_attention_heads not a multiple of multi_query_group_num")
    if problems:
        raise UserError(f"{where}: this ChatGLM variant is not supported: {', '.join(problems)}")


def native_config(cfg: Mapping, generation: int | None = None):
    """The :class:`transformers.GlmConfig` equivalent of a remote-code ChatGLM ``config.json`` dict."""
    from transformers import GlmConfig

    _check_supported(dict(cfg), "config.json")
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("kv_channels") or cfg["hidden_size"] // heads
    vocab = cfg["padded_vocab_size"]
    pad = cfg.get("pad_token_id")
    eos = cfg.get("eos_token_id")
    native = GlmConfig(
        vocab_size=vocab,
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["ffn_hidden_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=cfg["multi_query_group_num"],
        head_dim=head_dim,
        hidden_act="silu",
        attention_dropout=cfg.get("attention_dropout", 0.0) or 0.0,
        max_position_embeddings=cfg.get("seq_length", 2048),
        rms_norm_eps=cfg.get("layernorm_epsilon", 1e-5),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * float(cfg.get("rope_ratio", 1) or 1),
                         "partial_rotary_factor": 0.5},
        attention_bias=bool(cfg.get("add_qkv_bias", False)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        pad_token_id=pad if isinstance(pad, int) and 0 <= pad < vocab else None,
        eos_token_id=eos,
        bos_token_id=None,
        dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
    )
    native.architectures = ["GlmForCausalLM"]
    if generation is not None:
        # where the native directory came from; informational, transformers ignores it
        native.chatglm_generation = generation
    return native


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------


def _qkv_sizes(cfg: Mapping) -> tuple[int, int, int]:
    head_dim = cfg.get("kv_channels") or cfg["hidden_size"] // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * head_dim
    kv = cfg["multi_query_group_num"] * head_dim
    return q, kv, kv


def to_native_layout(state_dict: Mapping, original_config: Mapping) -> dict:
    """Rename/split a (partial) remote-code ChatGLM state dict into ``GlmForCausalLM`` names.

    Works on any subset of the tensors (one shard at a time). Unknown names raise ``UserError``.
    """
    sizes = _qkv_sizes(original_config)
    out = {}
    for name, t in state_dict.items():
        if name in _TOP_NAMES:
            out[_TOP_NAMES[name]] = t
            continue
        if name == _INV_FREQ or name.endswith(".rotary_pos_emb.inv_freq"):
            continue  # derived buffer; GLM computes its own from rope_theta
        m = _LAYER.match(name)
        if m:
            i, rest = m.groups()
            p = f"model.layers.{i}."
            if rest in _LAYER_NAMES:
                out[p + _LAYER_NAMES[rest]] = t
                continue
            if rest in ("self_attention.query_key_value.weight", "self_attention.query_key_value.bias"):
                kind = rest.rsplit(".", 1)[1]
                if t.shape[0] != sum(sizes):
                    raise UserError(f"{name}: {tuple(t.shape)} does not split into q/k/v of {sizes}")
                q, k, v = t.split(list(sizes), dim=0)
                out[p + f"self_attn.q_proj.{kind}"] = q.contiguous()
                out[p + f"self_attn.k_proj.{kind}"] = k.contiguous()
                out[p + f"self_attn.v_proj.{kind}"] = v.contiguous()
                continue
        raise UserError(f"unexpected tensor {name!r} in a ChatGLM checkpoint "
                        "(quantized, P-tuning or an unsupported variant?)")
    return out


def _inv_freq(original_config: Mapping):
    """The ``rotary_pos_emb.inv_freq`` buffer as the remote code computes it (in the checkpoint dtype)."""
    import torch

    dtype = getattr(torch, str(original_config.get("torch_dtype") or "float32").replace("torch.", ""))
    head_dim = original_config.get("kv_channels") or \
        original_config["hidden_size"] // original_config["num_attention_heads"]
    dim = head_dim // 2
    return 1.0 / (10000 ** (torch.arange(0, dim, 2).to(dtype=dtype) / dim))


def to_chatglm_layout(native_state_dict: Mapping, original_config: Mapping, include_inv_freq: bool = True) -> dict:
    """The inverse of :func:`to_native_layout`: ``GlmForCausalLM`` tensors -> remote-code ChatGLM names.

    ``q_proj``/``k_proj``/``v_proj`` of a layer must all be present (they are concatenated back into
    ``query_key_value``). With ``include_inv_freq`` the derived ``transformer.rotary_pos_emb.inv_freq``
    buffer the original checkpoints carry is recreated exactly as the remote code computes it.
    Used by ``merge`` to write a merged model back in the layout of the checkpoint it started from.
    """
    import torch

    top = {v: k for k, v in _TOP_NAMES.items()}
    layer_names = {v: k for k, v in _LAYER_NAMES.items()}
    out, qkv = {}, {}
    for name, t in native_state_dict.items():
        if name in top:
            out[top[name]] = t
            continue
        m = _NATIVE_LAYER.match(name)
        if m:
            i, rest = m.groups()
            if rest in layer_names:
                out[f"transformer.encoder.layers.{i}.{layer_names[rest]}"] = t
                continue
            pm = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
            if pm:
                qkv.setdefault((int(i), pm.group(2)), {})[pm.group(1)] = t
                continue
        if name.endswith("rotary_emb.inv_freq"):
            continue
        raise UserError(f"unexpected tensor {name!r} for a ChatGLM checkpoint")
    for (i, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise UserError(f"layer {i}: {kind} of q/k/v incomplete ({sorted(parts)})")
        out[f"transformer.encoder.layers.{i}.self_attention.query_key_value.{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0)
    if include_inv_freq:
        out[_INV_FREQ] = _inv_freq(original_config)
    return out
