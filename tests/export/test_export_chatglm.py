"""export of the ChatGLM family: ChatGLM2/3 and GLM-4 as llama.cpp's ``chatglm`` architecture (tensors,
hyperparameters, tokenizer, chat template, Modelfile), ChatGLM-6B (v1) refused; no file replaced
without --force. llama.cpp itself runs the files in test_llama_cpp.py."""

import json

import numpy as np
import pytest
from test_export import _go_to_jinja, field, read_gguf

from instructglm.cli import main

FAMILY = {"v2": "chatglm2", "v3": "chatglm3", "glm4": "glm4"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``gen -> tiny checkpoint in its original (remote-code) layout``, built once."""
    import chatglm2_tiny

    root, built = tmp_path_factory.mktemp("chatglm"), {}

    def get(gen: str) -> str:
        if gen not in built:
            built[gen] = str(chatglm2_tiny.make_tiny_checkpoint(root / gen, gen))
        return built[gen]

    return get


@pytest.mark.parametrize("gen", ["v2", "v3", "glm4"])
def test_chatglm_checkpoint_exports_as_the_chatglm_architecture(gen, checkpoints, tmp_path, capsys):
    from safetensors.torch import load_file

    from instructglm.models.chatglm import tokenizers as glm

    ckpt = checkpoints(gen)
    cfg = json.loads(open(f"{ckpt}/config.json").read())
    out = tmp_path / f"{gen}.gguf"
    assert main(["export", "--model", ckpt, "-o", str(out)]) == 0
    assert f"{gen}.gguf (chatglm, f16, " in capsys.readouterr().out
    reader, tensors = read_gguf(out)
    assert field(reader, "general.architecture") == "chatglm"
    assert field(reader, "chatglm.block_count") == 2 and field(reader, "chatglm.attention.head_count_kv") == 2
    assert field(reader, "chatglm.rope.dimension_count") == 8  # half of kv_channels 16 is rotated
    assert field(reader, "chatglm.rope.freq_base") == pytest.approx(10000 * cfg.get("rope_ratio", 1))
    assert field(reader, "chatglm.feed_forward_length") == 96
    per_layer = ("attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_q.bias",
                 "attn_k.bias", "attn_v.bias", "attn_output.weight", "ffn_norm.weight", "ffn_up.weight",
                 "ffn_down.weight")
    assert set(tensors) == {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{t}" for i in range(2) for t in per_layer}

    # the original tensors, split and renamed, no rows permuted (both rotate interleaved pairs)
    src = load_file(f"{ckpt}/model.safetensors")
    qkv_w = src["transformer.encoder.layers.1.self_attention.query_key_value.weight"].numpy()
    qkv_b = src["transformer.encoder.layers.1.self_attention.query_key_value.bias"].numpy()
    np.testing.assert_array_equal(tensors["blk.1.attn_k.weight"].data, qkv_w[64:96].astype(np.float16))
    np.testing.assert_array_equal(tensors["blk.1.attn_v.bias"].data, qkv_b[96:128])
    np.testing.assert_array_equal(tensors["blk.0.ffn_up.weight"].data,
                                  src["transformer.encoder.layers.0.mlp.dense_h_to_4h.weight"].numpy().astype(np.float16))
    np.testing.assert_array_equal(tensors["output.weight"].data,
                                  src["transformer.output_layer.weight"].numpy().astype(np.float16))

    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == cfg["padded_vocab_size"]
    assert field(reader, "tokenizer.ggml.add_bos_token") is False  # [gMASK]<sop> come from the chat template
    assert field(reader, "tokenizer.chat_template") == {
        "v2": glm.CHATGLM2_TEMPLATE, "v3": glm.CHATGLM3_TEMPLATE, "glm4": glm.GLM4_TEMPLATE}[gen]
    if gen == "glm4":
        assert field(reader, "tokenizer.ggml.model") == "gpt2" and field(reader, "tokenizer.ggml.pre") == "glm4"
        assert tokens[field(reader, "tokenizer.ggml.eos_token_id")] == "<|endoftext|>"
    else:
        assert field(reader, "tokenizer.ggml.model") == "llama"
        assert field(reader, "tokenizer.ggml.add_space_prefix") is True
        assert tokens[field(reader, "tokenizer.ggml.eos_token_id")] == "</s>"
        assert "<0x0A>" in tokens  # newlines are byte pieces
    if gen == "v2":
        assert "tokenizer.ggml.eot_token_id" not in reader.fields
    else:  # the official chat() stops at the next speaker's role token and at a tool hand-over
        assert tokens[field(reader, "tokenizer.ggml.eot_token_id")] == "<|user|>"
        assert tokens[field(reader, "tokenizer.ggml.eom_token_id")] == "<|observation|>"
    control = [t for t, kind in zip(tokens, field(reader, "tokenizer.ggml.token_type")) if kind == 3]
    assert {"[gMASK]", "<sop>"} <= set(control)

    modelfile = (tmp_path / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{gen}.gguf\nTEMPLATE \"\"\"[gMASK]<sop>")  # the family's own template
    assert ("问：" in modelfile) == (gen == "v2")


def test_spm_scores_make_llama_cpp_join_in_merge_order():
    from instructglm.export.vocab import LOWEST_SCORE, merge_scores

    tokens = ["<unk>", "<0x0A>", "a", "b", "c", "bc", "ab", "abc", "xy"]
    types = [3, 6, 1, 1, 1, 1, 1, 1, 1]
    merges = [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]
    scores = merge_scores(tokens, types, merges)
    # earlier merge -> higher score; a token made by several merges takes its first; others lowest
    assert scores[5] > scores[6] > scores[7] > LOWEST_SCORE and scores[7] == -2.0
    assert scores[0] == scores[1] == scores[8] == LOWEST_SCORE
    assert scores[2] == scores[3] == 0.0


def test_export_refuses_chatglm_6b_v1_in_one_line(tmp_path, capsys):
    import chatglm_tiny

    ckpt = chatglm_tiny.build_tiny_checkpoint(tmp_path / "v1")
    assert main(["export", "--model", str(ckpt), "-o", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ChatGLM-6B (v1) cannot be exported to GGUF" in err[0] and str(ckpt) in err[0]
    assert not (tmp_path / "x.gguf").exists()


def test_export_replaces_no_file_without_force(tmp_path, tiny_models, capsys):
    base = tiny_models("llama")
    out = tmp_path / "m.gguf"
    assert main(["-q", "export", "--model", base, "-o", str(out)]) == 0
    before = out.read_bytes()
    (tmp_path / "Modelfile").write_text("mine\n")
    assert main(["-q", "export", "--model", base, "-o", str(out), "--quant", "q8_0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.gguf: the file exists; pass --force" in err[0]
    assert out.read_bytes() == before and (tmp_path / "Modelfile").read_text() == "mine\n"

    other = tmp_path / "other.gguf"  # a new GGUF name, but the Modelfile beside it exists
    assert main(["-q", "export", "--model", base, "-o", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Modelfile: exists" in err[0] and "--force" in err[0]
    assert not other.exists() and (tmp_path / "Modelfile").read_text() == "mine\n"

    assert main(["-q", "export", "--model", base, "-o", str(out), "--quant", "q8_0", "--force"]) == 0
    assert out.read_bytes() != before and (tmp_path / "Modelfile").read_text().startswith("FROM ./m.gguf")


@pytest.mark.parametrize("name", ["chatglm2", "chatglm3", "glm4"])
def test_family_modelfile_renders_the_training_prompt(name):
    """The Ollama template of each ChatGLM family gives the text the training template builds
    (ChatGLM2 numbers rounds, which Go templates cannot: single-turn prompts only)."""
    import jinja2

    from instructglm.export.templates import modelfile
    from instructglm.templates import get_template

    tpl = get_template(name)
    eos = "<|endoftext|>" if name == "glm4" else "</s>"
    text = modelfile("m.gguf", name, eos)
    go = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert all(f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" in text for s in (*tpl.stop, eos))
    conversations = [[{"role": "user", "content": "你好 there"}],
                     [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2+2?"}]]
    if name != "chatglm2":
        conversations += [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                           {"role": "user", "content": "Who are you?"}],
                          [{"role": "system", "content": ""}, {"role": "user", "content": "x"}]]
    for messages in conversations:
        trained = "".join(s.text for s in tpl.prompt(messages))
        rendered = jinja2.Template(_go_to_jinja(go), keep_trailing_newline=True).render(messages=messages)
        assert rendered == trained


def test_chatglm_adapter_export_merges_in_transformers_layout(checkpoints, tmp_path):
    """--adapter on a ChatGLM3 base: merged (native glm) and exported with the adapter's template."""
    from chatglm_adapters import make_chatglm_adapter

    adapter = make_chatglm_adapter(checkpoints("v3"), tmp_path / "a", "chatglm3")
    out = tmp_path / "a.gguf"
    assert main(["-q", "export", "--adapter", adapter, "-o", str(out)]) == 0
    reader, tensors = read_gguf(out)
    assert field(reader, "general.architecture") == "chatglm"
    from instructglm.models.loading import load_model

    base = load_model(checkpoints("v3")).state_dict()["model.layers.0.self_attn.q_proj.weight"].numpy()
    assert not np.allclose(tensors["blk.0.attn_q.weight"].data, base.astype(np.float16))  # merged
    assert "<|assistant|>" in (tmp_path / "Modelfile").read_text()
