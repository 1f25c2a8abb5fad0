"""Regenerate ``tests/data/chatglm/<gen>/reference.json`` by running the ORIGINAL remote code.

Not a test and not importable from the project environment: run it by hand in a throwaway environment
that can run the THUDM code, e.g.::

    python3 -m venv /tmp/oldtf2
    /tmp/oldtf2/bin/pip install torch==2.13.0 transformers==4.40.2 sentencepiece tiktoken safetensors
    /tmp/oldtf2/bin/python tests/helpers/chatglm2_reference.py /tmp/ref

``/tmp/ref`` (outside the repository; the original code never enters it) must hold, taken from the
THUDM chatglm2-6b / chatglm3-6b / glm-4-9b-chat repositories:

* ``configuration_chatglm.py`` with ``ChatGLMConfig``;
* ``modeling_chatglm_v2.py``: the sequence-first modelling file (chatglm2-6b / chatglm3-6b, including
  chatglm3's ``rope_ratio`` base scaling), ``ChatGLMForConditionalGeneration`` with the attention
  selectable through ``CoreAttention.use_sdpa``;
* ``modeling_chatglm_glm4.py``: the batch-first GLM-4 modelling file, with its ``CoreAttention``
  (eager) and ``SdpaAttention`` classes;
* ``tokenization_chatglm.py`` with ``ChatGLM2Tokenizer`` (chatglm2-6b), ``ChatGLMTokenizer``
  (chatglm3-6b, incl. ``build_chat_input``) and ``ChatGLM4Tokenizer`` (glm-4-9b-chat; ``chat_ids`` = the
  tokenize path of its ``apply_chat_template``).

The figures recorded: the original tokenizer's ids for mixed text; logits (a 16-column slice, whole-row
sums / L2 norms, top-5 and the full last row) for plain text, ``[gMASK] sop`` + prompt (+ answer) and
the generation's chat format; 10-token greedy continuations; a left-padded batch.
"""
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "helpers"))
ORIGINAL = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ref")
sys.path.insert(0, str(ORIGINAL))
import chatglm2_tiny as tiny  # noqa: E402
import transformers  # noqa: E402
from configuration_chatglm import ChatGLMConfig  # noqa: E402
import modeling_chatglm_v2 as m2  # noqa: E402
import modeling_chatglm_glm4 as m4  # noqa: E402
import tokenization_chatglm as tk  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

torch.manual_seed(0)
SLICE = 16

TEXTS = [
    "Hello world, 你好世界!",
    "把下面的英文转换成大写字母：good morning\n\tdef f(x):\n    return  x*2   # 三个空格\n\n结束。 龘 😀",
    "  leading spaces and trailing   ",
    "Who are you?\r\nI am a model.\n\n\n\tTab\t\tend",
    "What is the capital of France? Paris. sop eop [gMASK]",
]


def floats(t):
    # 9 significant digits round-trip a float32 exactly and keep the file small
    return [float("%.9g" % x) for x in t.reshape(-1).tolist()]


def summarize(logits):
    """logits [seq, vocab] -> JSON-able figures"""
    top = torch.topk(logits, 5, dim=-1)
    return {
        "shape": list(logits.shape),
        "slice_cols": SLICE,
        "slice": [floats(r) for r in logits[:, :SLICE]],
        "row_sum": floats(logits.sum(-1, dtype=torch.float64)),
        "row_l2": floats(logits.double().norm(dim=-1)),
        "top5_ids": top.indices.tolist(),
        "top5_values": [floats(r) for r in top.values],
        "last_row": floats(logits[-1]),
        "argmax": logits.argmax(-1).tolist(),
    }


def greedy(model, ids, n=10):
    ids = list(ids)
    out = []
    for _ in range(n):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        nxt = int(logits.argmax())
        out.append(nxt)
        ids.append(nxt)
    return out


def main():
    ver = {"transformers": transformers.__version__, "torch": torch.__version__}
    import sentencepiece, tiktoken, tokenizers
    ver.update(sentencepiece=sentencepiece.__version__, tiktoken=tiktoken.__version__, tokenizers=tokenizers.__version__)
    for gen in tiny.GENERATIONS:
        ckpt = tiny.make_tiny_checkpoint(ORIGINAL / "ckpt" / gen, gen)
        cfg_dict = json.loads((ckpt / "config.json").read_text())
        cfg = ChatGLMConfig(**cfg_dict)
        cfg.torch_dtype = torch.float32
        mod = m4 if gen == "glm4" else m2
        model = mod.ChatGLMForConditionalGeneration(cfg, empty_init=False).eval()
        sd = load_file(str(ckpt / "model.safetensors"))
        model.load_state_dict(sd, strict=True)
        tok_cls = {"v2": tk.ChatGLM2Tokenizer, "v3": tk.ChatGLMTokenizer, "glm4": tk.ChatGLM4Tokenizer}[gen]
        tok = tok_cls.from_pretrained(str(ckpt))
        ref = {"generation": gen, "versions": ver, "weights_sha256": tiny.state_dict_sha256(sd),
               "tokenizer": [], "inputs": {}}
        for text in TEXTS:
            ref["tokenizer"].append({"text": text, "ids": tok(text)["input_ids"],
                                     "ids_no_special": tok(text, add_special_tokens=False)["input_ids"]})
        # model inputs
        plain = tok("The quick brown fox jumps over the lazy dog", add_special_tokens=False)["input_ids"]
        prompt = tok("问题：一年有几个月？")["input_ids"]  # [gMASK] sop + prompt
        answer = tok("答案：一年有十二个月。", add_special_tokens=False)["input_ids"]
        inputs = {"plain": plain, "prompt_answer": prompt + answer, "prompt": prompt}
        if gen == "v2":
            p = tok.build_prompt("你是谁？", history=[("Hello", "Hi there")])
            inputs["chat"] = tok(p)["input_ids"]
            ref["chat"] = {"prompt": p, "ids": inputs["chat"]}
        elif gen == "v3":
            ids = tok.build_chat_input("你是谁？", history=[("Hello", "Hi there")], system="You are helpful.")
            inputs["chat"] = ids["input_ids"][0].tolist()
            ref["chat"] = {"system": "You are helpful.", "history": [["Hello", "Hi there"]], "query": "你是谁？",
                           "ids": inputs["chat"]}
        else:
            conv = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hello"},
                    {"role": "assistant", "content": "Hi there"}, {"role": "user", "content": "你是谁？"}]
            inputs["chat"] = tok.chat_ids(conv)
            ref["chat"] = {"messages": conv, "ids": inputs["chat"]}
            text = "<|system|>\nYou are helpful.<|user|>\nHello<|assistant|>\nHi there<|user|>\n你是谁？<|assistant|>"
            ref["tokenizer"].append({"text": text, "ids": tok(text)["input_ids"],
                                     "ids_no_special": tok(text, add_special_tokens=False)["input_ids"]})
        for name, ids in inputs.items():
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0]
                pos = torch.arange(len(ids))[None]
                logits_pos = model(input_ids=torch.tensor([ids]), position_ids=pos).logits[0]
            assert (logits - logits_pos).abs().max() < 1e-5
            entry = {"ids": ids, "logits": summarize(logits)}
            if name in ("prompt", "chat"):
                entry["greedy"] = greedy(model, ids)
            ref["inputs"][name] = entry
            print(gen, name, len(ids), entry.get("greedy"))
        # eager vs sdpa inside the original code agree (sanity of the reference itself)
        for layer in model.transformer.encoder.layers:
            ca = layer.self_attention.core_attention
            if gen == "glm4":
                ca.__class__ = m4.CoreAttention
            else:
                ca.use_sdpa = False
        with torch.no_grad():
            eager = model(input_ids=torch.tensor([inputs["chat"]])).logits[0]
        d = (eager - torch.tensor(ref["inputs"]["chat"]["logits"]["last_row"])[None]).abs()[-1].max()
        print(gen, "eager vs sdpa last row", float(d))
        assert d < 1e-5
        for layer in model.transformer.encoder.layers:
            ca = layer.self_attention.core_attention
            if gen == "glm4":
                ca.__class__ = m4.SdpaAttention
            else:
                ca.use_sdpa = True
        # left-padded batch (the original tokenizer pads left and emits position_ids)
        batch = dict(tok(["你好", "What is the capital of France?"], padding=True, return_tensors="pt"))
        # what the original _pad emits for left padding: zeros over the pad, then 0..n-1
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0) * batch["attention_mask"]
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        position_ids=batch["position_ids"]).logits
        rows = []
        for b in range(out.shape[0]):
            keep = batch["attention_mask"][b].bool()
            rows.append({"input_ids": batch["input_ids"][b].tolist(), "attention_mask": batch["attention_mask"][b].tolist(),
                         "position_ids": batch["position_ids"][b].tolist(), "logits": summarize(out[b][keep])})
        ref["padded_batch"] = rows
        path = REPO / "tests" / "data" / "chatglm" / gen / "reference.json"
        path.write_text(json.dumps(ref, ensure_ascii=False, separators=(",", ":")) + "\n")
        print(gen, "wrote", path, path.stat().st_size)


if __name__ == "__main__":
    main()
