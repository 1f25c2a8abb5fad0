"""export: chat/Ollama templates, GGUF tensors and metadata, Q8_0, the llama.cpp layout, the Modelfile."""

import json

import numpy as np
import pytest
import torch
from adapters import make_adapter

from instructglm.cli import main
from instructglm.record import Message
from instructglm.templates import get_template

PROBE_IDS = torch.tensor([[1, 40, 50, 60, 70, 80, 90, 100, 7, 9]])


def user_message(instruction: str, input_text: str = "") -> dict:
    return Message.user(instruction, input_text).to_dict()


def logits(model, ids=PROBE_IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def load(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


def _go_to_jinja(go: str) -> str:
    """Translate the Go template subset the Modelfile uses into Jinja, to render it here; any other
    construct fails the test."""
    import re

    out, stack = [], []
    action = r'\{\{-?\s*((?:"(?:[^"\\]|\\.)*"|[^"}])*?)\s*-?\}\}'  # (a string may hold "}}")
    pos = 0
    for m in re.finditer(action, go):
        out.append(go[pos:m.start()])
        pos, tag = m.end(), m[1]
        if tag == "range .Messages":
            stack.append("for")
            out.append("{% for m in messages %}")
        elif tag == "end":
            out.append("{% end" + stack.pop() + " %}")
        elif r := re.fullmatch(r'(else )?if eq \.Role ("\w+")', tag):
            if not r[1]:
                stack.append("if")
            out.append(("{% elif" if r[1] else "{% if") + f" m.role == {r[2]} %}}")
        elif tag == "else":
            out.append("{% else %}")
        elif tag == "if .Content":
            stack.append("if")
            out.append("{% if m.content %}")
        elif tag == ".Role":
            out.append("{{ m.role }}")
        elif tag == "if $seen":
            stack.append("if")
            out.append("{% if ns.seen %}")
        elif tag in ("$seen := false", "$seen = true"):
            out.append("{% set ns = namespace(seen=false) %}" if ":=" in tag else "{% set ns.seen = true %}")
        elif tag == ".Content":
            out.append("{{ m.content }}")
        elif tag.startswith('"'):
            out.append("{{ " + tag + " }}")
        else:
            raise AssertionError(f"unexpected Go template construct: {tag}")
    out.append(go[pos:])
    assert not stack
    return "".join(out)


@pytest.mark.parametrize("name", ["alpaca", "chatglm", "file"])
def test_chat_and_ollama_templates_render_the_training_prompt(name, tmp_path):
    """Jinja (tokenizer/GGUF) and Go (Ollama) forms of each template give the text training encodes."""
    import jinja2
    from tiny import make_tokenizer

    from instructglm.export.templates import chat_template, modelfile

    if name == "file":
        name = str(tmp_path / "t.yaml")
        (tmp_path / "t.yaml").write_text(
            'user: "<|user|>\\n{content}\\n"\nassistant_prefix: "<|assistant|>\\n"\nassistant_suffix: "<|end|>"\n'
            'eos: false\nturn_separator: "\\n"\nprefix: "{{go}}"\nsystem: "<|system|>\\n{content}\\n"\n'
            'stop: ["<|user|>"]\n')
    tpl = get_template(name)
    tok = make_tokenizer()
    tok.chat_template = chat_template(name)
    text = modelfile("m.gguf", name, tok.eos_token)
    go = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert all(f'PARAMETER stop {json.dumps(s, ensure_ascii=False)}' in text for s in tpl.stop)
    conversations = [[user_message("Who are you?")],
                     [{"role": "system", "content": "Answer briefly."}, user_message("What is 2+2?")],
                     [user_message("Hi"), {"role": "assistant", "content": "Hello."}, user_message("Who are you?")]]
    for messages in conversations:
        trained = "".join(s.text + (tok.eos_token if s.train and s.eos else "") for s in tpl.prompt(messages))
        assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == trained
        if "{round}" not in getattr(tpl, "user", "") and not (name == "chatglm" and len(messages) > 2):
            plain = [{"role": m["role"], "content": m["content"]} for m in messages]  # what Ollama sees
            assert jinja2.Template(_go_to_jinja(go), keep_trailing_newline=True).render(messages=plain) == trained


def read_gguf(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    return reader, {t.name: t for t in reader.tensors}


def field(reader, key):
    return reader.fields[key].contents()


def test_gguf_round_trip_f16(tmp_path, tiny_models, capsys):
    from gguf import GGMLQuantizationType as Q

    from instructglm.export.gguf import permute_qk

    base = tiny_models("llama")
    out = tmp_path / "out" / "tiny.gguf"
    assert main(["export", "--model", base, "--format", "gguf", "-o", str(out)]) == 0
    assert "tiny.gguf (llama, f16, " in capsys.readouterr().out
    reader, tensors = read_gguf(out)
    src = {k: v.numpy() for k, v in load(base).state_dict().items()}
    n = 2
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{t}.weight" for i in range(n) for t in
        ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == expected
    pairs = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
             "output_norm.weight": "model.norm.weight", "blk.1.attn_v.weight": "model.layers.1.self_attn.v_proj.weight",
             "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
             "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
             "blk.1.ffn_norm.weight": "model.layers.1.post_attention_layernorm.weight"}
    for gname, hname in pairs.items():
        t = tensors[gname]
        assert list(t.shape) == list(reversed(src[hname].shape))  # GGUF lists dimensions innermost first
        if src[hname].ndim == 1:
            assert t.tensor_type == Q.F32 and np.array_equal(t.data, src[hname])
        else:
            assert t.tensor_type == Q.F16
            np.testing.assert_array_equal(t.data, src[hname].astype(np.float16))
    # Q and K rows are permuted for llama.cpp's rotary layout (4 query heads, 2 key/value heads).
    q, k = src["model.layers.0.self_attn.q_proj.weight"], src["model.layers.0.self_attn.k_proj.weight"]
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight"].data, permute_qk(q, 4).astype(np.float16))
    np.testing.assert_array_equal(tensors["blk.0.attn_k.weight"].data, permute_qk(k, 2).astype(np.float16))
    assert not np.array_equal(permute_qk(q, 4), q)

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(base)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "llama.block_count") == 2 and field(reader, "llama.attention.head_count_kv") == 2
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == len(tok) and tokens[tok.eos_token_id] == "<eos>"
    assert [field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")] == [1, 2, 0]
    assert field(reader, "tokenizer.ggml.token_type")[:3] == [3, 3, 3]  # the special tokens are CONTROL
    assert len(field(reader, "tokenizer.ggml.merges")) > 100
    assert field(reader, "tokenizer.ggml.add_bos_token") is True
    from instructglm.export.templates import chat_template
    assert field(reader, "tokenizer.chat_template") == chat_template("alpaca")

    modelfile = (out.parent / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./tiny.gguf\nTEMPLATE \"\"\"")
    assert 'PARAMETER stop "### Instruction:"' in modelfile and "### Response:\n" in modelfile


def test_gguf_q8_0_with_adapter_dequantizes_to_the_merged_weights(tmp_path, tiny_models):
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize
    from peft import PeftModel

    base = tiny_models("llama")
    adapter = make_adapter(base, tmp_path / "a", seed=4)
    out = tmp_path / "m.gguf"
    assert main(["-q", "export", "--adapter", str(adapter), "-o", str(out), "--quant", "q8_0"]) == 0
    merged = {k: v.numpy() for k, v in
              PeftModel.from_pretrained(load(base), str(adapter)).merge_and_unload().state_dict().items()}
    _, tensors = read_gguf(out)
    for gname, hname in (("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight"),
                         ("blk.1.attn_v.weight", "model.layers.1.self_attn.v_proj.weight"),
                         ("output.weight", "lm_head.weight")):
        t, w = tensors[gname], merged[hname]
        assert t.tensor_type == Q.Q8_0
        got = dequantize(t.data, Q.Q8_0).reshape(w.shape)
        # Q8_0: each block of 32 values shares one scale max|x|/127, stored as f16. Rounding errs by half
        # a step, the f16 scale by at most 127 * 2**-11 ~ 0.06 of a step more.
        step = np.abs(w.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(got - w).reshape(-1, 32) <= step * 0.57 + 1e-7)
        assert np.abs(got - w).max() > 0  # really quantized
    assert tensors["output_norm.weight"].tensor_type == Q.F32


def test_gguf_gemma3_names_and_norm_shift(tmp_path, tiny_models):
    base = tiny_models("gemma3")
    out = tmp_path / "g.gguf"
    assert main(["-q", "export", "--model", base, "-o", str(out)]) == 0
    reader, tensors = read_gguf(out)
    src = {k: v.numpy() for k, v in load(base).state_dict().items()}
    assert field(reader, "general.architecture") == "gemma3"
    assert "output.weight" not in tensors  # tied to token_embd
    assert {"blk.0.attn_q_norm.weight", "blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight"} <= set(tensors)
    # Gemma's RMSNorm multiplies by (1 + w); llama.cpp by the stored weight.
    np.testing.assert_allclose(tensors["blk.1.post_ffw_norm.weight"].data,
                               src["model.layers.1.post_feedforward_layernorm.weight"] + 1, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight"].data,
                                  src["model.layers.0.self_attn.q_proj.weight"].astype(np.float16))


def test_gguf_export_refuses_unsupported_architecture(tmp_path, tiny_models, capsys):
    assert main(["export", "--model", tiny_models("glm4"), "-o", str(tmp_path / "x.gguf")]) == 2
    assert "model_type 'glm4' cannot be exported to GGUF" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


def _rope(x, pos, theta, interleaved):
    """Rotate a head vector: pairs (i, i + d/2) (transformers) or (2i, 2i + 1) (llama.cpp 'llama')."""
    d = x.shape[-1]
    freqs = pos * theta ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(freqs), np.sin(freqs)
    if interleaved:
        a, b = x[0::2], x[1::2]
        out = np.empty_like(x)
        out[0::2], out[1::2] = a * cos - b * sin, a * sin + b * cos
        return out
    a, b = x[: d // 2], x[d // 2:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos])


def test_qk_permutation_gives_llama_cpp_the_same_attention_scores():
    from instructglm.export.gguf import permute_qk

    rng = np.random.default_rng(0)
    heads, d, hidden = 4, 16, 32
    wq, wk = rng.normal(size=(heads * d, hidden)), rng.normal(size=(heads * d, hidden))
    x1, x2 = rng.normal(size=hidden), rng.normal(size=hidden)
    pq, pk = permute_qk(wq, heads), permute_qk(wk, heads)
    for h in range(heads):
        rows = slice(h * d, (h + 1) * d)
        hf = _rope(wq[rows] @ x1, 5, 10000.0, False) @ _rope(wk[rows] @ x2, 2, 10000.0, False)
        cpp = _rope(pq[rows] @ x1, 5, 10000.0, True) @ _rope(pk[rows] @ x2, 2, 10000.0, True)
        assert cpp == pytest.approx(hf, rel=1e-9)
        # without the permutation the scores differ
        assert _rope(wq[rows] @ x1, 5, 10000.0, True) @ _rope(wk[rows] @ x2, 2, 10000.0, True) != pytest.approx(hf)


def _llama_cpp_style_forward(path, ids):
    """The llama architecture computed from the GGUF file alone, the way llama.cpp does it:
    interleaved-pair RoPE, grouped K/V heads, RMSNorm, SwiGLU, ``output`` (or tied ``token_embd``)."""
    reader, t = read_gguf(path)
    w = {k: np.asarray(v.data, dtype=np.float64) for k, v in t.items()}
    n_head, n_kv = field(reader, "llama.attention.head_count"), field(reader, "llama.attention.head_count_kv")
    eps, theta = field(reader, "llama.attention.layer_norm_rms_epsilon"), field(reader, "llama.rope.freq_base")
    norm = lambda x, g: x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g  # noqa: E731
    x = w["token_embd.weight"][ids]
    T = len(ids)
    for i in range(field(reader, "llama.block_count")):
        h = norm(x, w[f"blk.{i}.attn_norm.weight"])
        q = (h @ w[f"blk.{i}.attn_q.weight"].T).reshape(T, n_head, -1)
        k = (h @ w[f"blk.{i}.attn_k.weight"].T).reshape(T, n_kv, -1)
        v = (h @ w[f"blk.{i}.attn_v.weight"].T).reshape(T, n_kv, -1)
        d = q.shape[-1]
        q = np.stack([[_rope(q[p, j], p, theta, True) for j in range(n_head)] for p in range(T)])
        k = np.stack([[_rope(k[p, j], p, theta, True) for j in range(n_kv)] for p in range(T)])
        out = np.zeros_like(q)
        for j in range(n_head):
            kv = j // (n_head // n_kv)
            s = q[:, j] @ k[:, kv].T / np.sqrt(d) + np.triu(np.full((T, T), -np.inf), 1)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[:, j] = (p / p.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(T, -1) @ w[f"blk.{i}.attn_output.weight"].T
        h = norm(x, w[f"blk.{i}.ffn_norm.weight"])
        g = h @ w[f"blk.{i}.ffn_gate.weight"].T
        x = x + (g / (1 + np.exp(-g)) * (h @ w[f"blk.{i}.ffn_up.weight"].T)) @ w[f"blk.{i}.ffn_down.weight"].T
    return norm(x, w["output_norm.weight"]) @ w.get("output.weight", w["token_embd.weight"]).T


def test_gguf_llama_file_computes_the_source_model_logits(tmp_path, tiny_models):
    """End to end without llama.cpp: the exported tensors, read with llama.cpp's conventions, give
    the transformers model's logits (up to f16 rounding)."""
    base = tiny_models("llama")
    out = tmp_path / "t.gguf"
    assert main(["-q", "export", "--model", base, "-o", str(out)]) == 0
    ids = PROBE_IDS[0].tolist()
    got = _llama_cpp_style_forward(out, ids)
    expected = logits(load(base))[0].double().numpy()
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()
    assert (got.argmax(-1) == expected.argmax(-1)).all()
