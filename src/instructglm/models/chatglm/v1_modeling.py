"""A native (no remote code) implementation of the original ChatGLM-6B (v1, THUDM/chatglm-6b).

Parameter names are the official checkpoint's (``transformer.layers.N.attention.query_key_value``
…), so official weights load as they are, PEFT targets such as ``query_key_value`` work, and a
merged model saved from here loads again with the official code. The numerics follow the
original: GLM blocks whose residual adds the *normalized* input scaled by sqrt(2 * 28), a tanh-GELU
MLP, 2-D rotary positions on the two halves of each head, the query divided by the layer number
before the product and the scores multiplied back in fp32, and the prefix-LM mask (see
:mod:`.v1_masks`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from instructglm.models.chatglm.v1_config import ChatGLMv1Config
from instructglm.models.chatglm.v1_masks import allowed_from_4d, allowed_mask, glm_layout, segments_from_positions

# The original GLMBlock takes ``num_layers`` with a default of 28 and the model never passes its
# own, so every ChatGLM-6B checkpoint (and any smaller one run with that code) scales by sqrt(56).
RESIDUAL_ALPHA = (2 * 28) ** 0.5


def glm_gelu(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU, written out as GLM does (kept literal so the rounding matches)."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


def rotary_tables(position_ids: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[b, s, 1, head_dim]`` for 2-D positions ``[b, 2, s]``.

    Each half of a head is rotated by one of the two position ids over its own rotary dimension.
    The original stores the inverse frequencies in fp16 even in fp32 runs; they are rounded the
    same way here so the angles are bit-identical. Computed on the fly (a few dozen values) rather
    than kept as a buffer, so meta-device loading has nothing to restore."""
    rot_dim = head_dim // 2
    inv = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2, device=position_ids.device).float() / rot_dim))
    inv = inv.half().float()
    angles = position_ids.float()[..., None] * inv  # [b, 2, s, rot_dim / 2]
    emb = torch.cat([angles, angles], dim=-1)  # [b, 2, s, rot_dim]
    emb = torch.cat([emb[:, 0], emb[:, 1]], dim=-1)  # [b, s, head_dim]: first half ids, then blocks
    return emb.cos()[:, :, None], emb.sin()[:, :, None]


def _rotate_halves(x: torch.Tensor) -> torch.Tensor:
    """rotate_half applied to each half of the head dimension separately."""
    parts = []
    for half in x.chunk(2, dim=-1):
        a, b = half.chunk(2, dim=-1)
        parts.extend([-b, a])
    return torch.cat(parts, dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos.to(x.dtype) + _rotate_halves(x) * sin.to(x.dtype)


class GLMPrefixEncoder(nn.Module):
    """P-Tuning v2's prefix (``pre_seq_len`` virtual tokens), under the official parameter names:
    one key and one value per layer and virtual token, optionally through a two-layer MLP."""

    def __init__(self, config: ChatGLMv1Config):
        super().__init__()
        out = config.num_layers * config.hidden_size * 2
        self.prefix_projection = config.prefix_projection
        if self.prefix_projection:
            self.embedding = nn.Embedding(config.pre_seq_len, config.hidden_size)
            self.trans = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.Tanh(),
                                       nn.Linear(config.hidden_size, out))
        else:
            self.embedding = nn.Embedding(config.pre_seq_len, out)

    def forward(self, prefix: torch.Tensor) -> torch.Tensor:
        x = self.embedding(prefix)
        return self.trans(x) if self.prefix_projection else x


class GLMSelfAttention(nn.Module):
    def __init__(self, config: ChatGLMv1Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.config = config
        # One fused projection; its rows are grouped per head as [q | k | v] (head-major), which is
        # how the checkpoint stores them.
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x, cos, sin, allowed, prefix_kv=None, cache: Cache | None = None, output_attentions=False):
        b, s, _ = x.shape
        q, k, v = self.query_key_value(x).view(b, s, self.num_heads, 3 * self.head_dim).split(self.head_dim, -1)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # keys are cached after rotation, as in the original
            k, v = cache.update(k, v, self.layer_idx)
        if prefix_kv is not None:  # P-Tuning v2 prefix: unrotated, visible to every token, never cached
            pk, pv = prefix_kv
            k, v = torch.cat([pk.to(k.dtype), k], dim=2), torch.cat([pv.to(v.dtype), v], dim=2)
            allowed = torch.cat([allowed.new_ones(*allowed.shape[:-1], pk.shape[2]), allowed], dim=-1)
        impl = getattr(self.config, "_attn_implementation", None) or "sdpa"
        if impl == "eager" or output_attentions:
            out, probs = self._eager(q, k, v, allowed)
        else:
            # A row with nothing to attend to (padding) would give NaN; let it see everything instead,
            # close to the original's uniform weights there. Its output is never used.
            allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=1.0 / math.sqrt(self.head_dim))
            probs = None
        out = out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        return self.dense(out), probs

    def _eager(self, q, k, v, allowed):
        """The original's order of operations: the query is divided by sqrt(d) * (layer + 1) so
        that fp16 products cannot overflow, masked scores become -10000, and the scores are
        multiplied back by (layer + 1) in fp32 before the softmax."""
        coeff = float(self.layer_idx + 1)
        scores = torch.matmul(q / (math.sqrt(self.head_dim) * coeff), k.transpose(-1, -2))
        scores = scores.masked_fill(~allowed, -10000.0)
        probs = torch.softmax(scores.float() * coeff, dim=-1).to(v.dtype)
        return torch.matmul(probs, v), probs


class GLMMLP(nn.Module):
    def __init__(self, config: ChatGLMv1Config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.inner_hidden_size)
        self.dense_4h_to_h = nn.Linear(config.inner_hidden_size, config.hidden_size)

    def forward(self, x):
        return self.dense_4h_to_h(glm_gelu(self.dense_h_to_4h(x)))


class GLMBlock(GradientCheckpointingLayer):
    def __init__(self, config: ChatGLMv1Config, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = GLMSelfAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = GLMMLP(config)

    def forward(self, hidden, cos, sin, allowed, prefix_kv=None, cache=None, output_attentions=False):
        # Tensors that may need gradients are positional: the checkpoint wrapper only sees those.
        x = self.input_layernorm(hidden)
        attn, probs = self.attention(x, cos, sin, allowed, prefix_kv, cache=cache,
                                     output_attentions=output_attentions)
        # GLM's residual adds the *normalized* input, scaled up (DeepNorm-style), not the raw one.
        h = x * RESIDUAL_ALPHA + attn
        m = self.post_attention_layernorm(h)
        return m * RESIDUAL_ALPHA + self.mlp(m), probs


class GLMCache(DynamicCache):
    """A DynamicCache that also remembers each row's last (position, block) id, so decoding can
    continue GLM's 2-D positions from the new tokens alone; kept in step when rows are dropped,
    reordered or repeated. (A plain DynamicCache works too: it just gets the attribute.)"""

    glm_last_position: torch.Tensor | None = None

    def _index_positions(self, fn):
        if self.glm_last_position is not None:
            self.glm_last_position = fn(self.glm_last_position)

    def batch_select_indices(self, indices):
        super().batch_select_indices(indices)
        self._index_positions(lambda t: t[indices.to(t.device)])

    def reorder_cache(self, beam_idx):
        super().reorder_cache(beam_idx)
        self._index_positions(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats):
        super().batch_repeat_interleave(repeats)
        self._index_positions(lambda t: t.repeat_interleave(repeats, dim=0))

    def reset(self):
        super().reset()
        self.glm_last_position = None


class ChatGLMv1PreTrainedModel(PreTrainedModel):
    config_class = ChatGLMv1Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]
    _supports_sdpa = True
    # The official shards also hold each layer's rotary inv_freq buffer; it is recomputed here.
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]
    # The original packs nothing itself, but its mask is per example; see ChatGLMv1Model.forward
    # for the packed format (position ids restarting at 0 per example) that it understands.
    supports_packing = True


class ChatGLMv1Model(ChatGLMv1PreTrainedModel):
    def __init__(self, config: ChatGLMv1Config):
        super().__init__(config)
        if getattr(config, "quantization_bit", 0):
            raise ValueError("quantized ChatGLM-6B checkpoints (int4/int8) are not supported; use the fp16 one")
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([GLMBlock(config, i) for i in range(config.num_layers)])
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.gradient_checkpointing = False
        if config.pre_seq_len:
            # P-Tuning v2 as the original does it: the base is frozen, only the prefix trains.
            for param in self.parameters():
                param.requires_grad = False
            self.prefix_encoder = GLMPrefixEncoder(config)
            self.prefix_dropout = nn.Dropout(0.1)  # as in the original P-Tuning v2 code
        self.post_init()

    def get_input_embeddings(self):
        return self.word_embeddings

    def set_input_embeddings(self, value):
        self.word_embeddings = value

    def prefix_key_values(self, batch_size: int, dtype: torch.dtype):
        """Per layer ``(key, value)`` ``[b, heads, pre_seq_len, head_dim]`` from the prefix encoder."""
        cfg = self.config
        tokens = torch.arange(cfg.pre_seq_len, device=self.word_embeddings.weight.device)
        kv = self.prefix_encoder(tokens[None].expand(batch_size, -1)).to(dtype)
        kv = kv.view(batch_size, cfg.pre_seq_len, cfg.num_layers * 2, cfg.num_attention_heads,
                     cfg.hidden_size // cfg.num_attention_heads)
        kv = self.prefix_dropout(kv).permute(2, 0, 3, 1, 4)  # [2 * layers, b, heads, pre, head_dim]
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(cfg.num_layers)]

    def _key_validity(self, attention_mask, past_len, s, b, device):
        """``[b, past_len + s]``: which keys are real tokens, and the caller's 4-D mask if any."""
        if attention_mask is not None and attention_mask.dim() == 4:
            return allowed_from_4d(attention_mask).any(dim=-2)[:, 0], attention_mask  # unseen keys: padding
        if attention_mask is None:
            return torch.ones(b, past_len + s, dtype=torch.bool, device=device), None
        key_valid = attention_mask.bool()
        if key_valid.shape[1] == s and past_len:  # a mask over the new tokens only
            key_valid = torch.cat([key_valid.new_ones(b, past_len), key_valid], dim=1)
        return key_valid, None

    def _layout(self, input_ids, attention_mask, position_ids, cache, past_len, s, b, device):
        """(2-D position ids ``[b, 2, s]``, allowed mask) of the new tokens, from what the caller gave.

        Decoding on a cache this model filled needs nothing: like the original's generation
        update, each new token keeps the last position id and advances the block id by one."""
        cfg = self.config
        key_valid, mask4d = self._key_validity(attention_mask, past_len, s, b, device)
        last = getattr(cache, "glm_last_position", None) if past_len else None
        if last is not None and (position_ids is None or position_ids.dim() == 2) and last.shape[0] == b:
            step = torch.arange(1, s + 1, device=device)
            pos = torch.stack([last[:, :1].expand(b, s), last[:, 1:] + step], dim=1)
            context = torch.zeros(b, s, dtype=torch.bool, device=device)
            return pos, allowed_mask(context, None, key_valid, past_len, mask4d)
        # [b, s] position ids mark packed examples (numbered from 0 each); their values are not used.
        packed = position_ids is not None and position_ids.dim() == 2
        segments = segments_from_positions(position_ids) if packed else None
        if input_ids is None:
            if position_ids is None or position_ids.dim() != 3:
                raise ValueError("ChatGLM-6B needs input_ids (or [b, 2, s] position ids) to lay out its inputs")
            context = torch.zeros(b, s, dtype=torch.bool, device=device)
            return position_ids, allowed_mask(context, segments, key_valid, past_len, mask4d)
        pos, context = glm_layout(input_ids, key_valid[:, -s:], segments, cfg.bos_token_id, cfg.mask_token_id,
                                  cfg.gmask_token_id)
        if position_ids is not None and position_ids.dim() == 3:
            pos = position_ids  # the caller's own (position, block) ids, e.g. the original tokenizer's
        return pos, allowed_mask(context, segments, key_valid, past_len, mask4d)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, output_attentions=False, output_hidden_states=False, past_key_values=None,
                **kwargs):
        """``position_ids`` may be the original's ``[b, 2, s]`` (position, block) ids, or ``[b, s]``
        ids that restart at 0 for every packed example (segments); ``attention_mask`` a 2-D padding
        mask (1 = token) or a transformers 4-D mask (bool True / float 0 = may attend). Note the
        original tokenizer's own 4-D masks are inverted (True = masked): pass ``~mask`` for those."""
        cache = cache if cache is not None else past_key_values  # PEFT still says past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        b, s = inputs_embeds.shape[:2]
        if use_cache and cache is None:
            cache = GLMCache(config=self.config)
        past_len = cache.get_seq_length() if cache is not None else 0
        pos, allowed = self._layout(input_ids, attention_mask, position_ids, cache, past_len, s, b,
                                    inputs_embeds.device)
        if cache is not None:  # where decoding continues from (see _layout)
            cache.glm_last_position = pos[:, :, -1].clone()
        cos, sin = rotary_tables(pos, self.config.hidden_size // self.config.num_attention_heads)
        prefix = self.prefix_key_values(b, inputs_embeds.dtype) if self.config.pre_seq_len else None
        hidden, all_hidden, all_attn = inputs_embeds, [], []
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden, probs = layer(hidden, cos, sin, allowed, prefix[i] if prefix else None,
                                  cache=cache if use_cache or past_len else None,
                                  output_attentions=output_attentions)
            if output_attentions:
                all_attn.append(probs)
        hidden = self.final_layernorm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden, cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None)


class ChatGLMv1ForCausalLM(ChatGLMv1PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.word_embeddings.weight"}

    def __init__(self, config: ChatGLMv1Config):
        super().__init__(config)
        self.transformer = ChatGLMv1Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.word_embeddings

    def set_input_embeddings(self, value):
        self.transformer.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_decoder(self):
        return self.transformer

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, output_attentions=False, output_hidden_states=False,
                logits_to_keep: int = 0, past_key_values=None, **kwargs):
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache if cache is not None else past_key_values, inputs_embeds=inputs_embeds,
                               use_cache=use_cache, output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:  # shifted mean cross-entropy in fp32, ignoring -100, like the original
            loss = self.loss_function(logits, labels, self.config.vocab_size,
                                      num_items_in_batch=kwargs.get("num_items_in_batch"))
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states,
                                      attentions=out.attentions)

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, inputs_embeds=None,
                                      use_cache=True, past_key_values=None, **kwargs):
        """Only the tokens the cache lacks go in; the model lays out the prompt itself and continues
        the positions from the cache afterwards (see ChatGLMv1Model._layout).

        The cache goes out as ``past_key_values``, where PEFT's prefix tuning (P-Tuning v2) looks for
        it: an empty one is replaced by the trained prefix. A cache that holds such a prefix is longer
        than the ids it has seen, so once it is at least as long as ``input_ids`` only the newest id is new."""
        cache = cache if cache is not None else past_key_values
        past_len = cache.get_seq_length() if cache is not None else 0
        new = input_ids[:, -1:] if 0 < input_ids.shape[1] <= past_len else input_ids[:, past_len:]
        inputs = {"input_ids": new, "attention_mask": attention_mask, "past_key_values": cache,
                  "use_cache": use_cache}
        if inputs_embeds is not None and past_len == 0:
            inputs["inputs_embeds"] = inputs_embeds
        for key in ("position_ids", "output_attentions", "output_hidden_states", "logits_to_keep"):
            if kwargs.get(key) is not None:
                inputs[key] = kwargs[key][..., -new.shape[1]:] if key == "position_ids" else kwargs[key]
        return inputs
