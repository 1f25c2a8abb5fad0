"""Continuous batching on one KV cache (``DecodeBatch``): rows that join while others decode, with
their prompts fed in bounded chunks, answer exactly what each prompt answers alone; the cache keeps
no column that no row attends to; per-token stop-string work does not grow with the answer."""

import time

import pytest

from instructglm.generation import Engine, Row, SamplingConfig, TextStream
from instructglm.generation.batch import DecodeBatch, cache_supported

QUESTIONS = ["Who are you?", "What is the capital of France? " * 4, "你是谁？",
             "Convert to uppercase: good morning", "Name three rivers of Europe and say where they rise. " * 2]


def _engine(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return Engine(AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))


@pytest.mark.parametrize("arch", ["llama", "gemma3", "glm4"])  # gemma3: sliding-window layers (window 16 here)
def test_rows_joining_mid_decode_answer_as_alone(tiny_models, arch):
    import torch

    from instructglm.templates import get_template

    engine, template = _engine(tiny_models(arch)), get_template("alpaca")
    prompts = engine.prompts_ids(template, [[{"role": "user", "content": q}] for q in QUESTIONS])
    budgets = [24, 9, 17, 30, 12]
    rows = [Row(p, TextStream(engine.tokenizer, template.stop, True, engine.eos, n)) for p, n in zip(prompts, budgets)]
    ended = []
    for i, row in enumerate(rows):
        row.on_end = lambda i=i: ended.append(i)
    widths = []
    model_call = engine.model.forward
    engine.model.forward = lambda *a, **k: (widths.append(k["input_ids"].numel()), model_call(*a, **k))[1]
    batch = DecodeBatch(engine, torch.Generator().manual_seed(0), prefill_tokens=8)
    arrivals = {0: rows[:2], 3: rows[2:4], 7: rows[4:]}  # step -> rows that arrive then
    step, waiting = 0, []
    while step < 200 and (len(batch) or waiting or step <= max(arrivals)):
        waiting += arrivals.get(step, [])
        if not batch.prefilling and waiting:
            batch.admit(waiting)
            waiting = []
        if batch.prefilling:
            batch.prefill_step()
        if batch.running is not None:
            batch.decode_step()
            assert bool(batch.running is None or batch.running.mask[:, 0].any())  # no all-padding column kept
        step += 1
    del engine.model.forward
    assert sorted(ended) == list(range(len(rows)))
    assert max(widths) <= 8 + len(rows)  # a prefill chunk (<= 8 prompt tokens) plus the decoding rows
    for row, prompt, n in zip(rows, prompts, budgets):
        assert row.stream.text == engine.generate([prompt], SamplingConfig(max_new_tokens=n), template.stop)[0]
    assert cache_supported(engine.forward(torch.tensor([prompts[0]]), None, None, None)[1])


def test_cancelled_row_leaves_at_the_next_step(tiny_models):
    import torch

    engine = _engine(tiny_models("llama"))
    gone = [False]
    rows = [Row(engine.text_ids(q), TextStream(engine.tokenizer, max_tokens=50)) for q in ("Hello there", "Hi")]
    rows[1].cancelled = lambda: gone[0]
    batch = DecodeBatch(engine, torch.Generator().manual_seed(0))
    batch.admit(rows)
    batch.prefill_step()
    batch.decode_step()
    assert len(batch) == 2
    gone[0] = True
    batch.decode_step()
    assert len(batch) == 1 and rows[1].stream.reason == "cancelled" and batch.running.rows == [rows[0]]


def test_stop_text_cost_does_not_grow_with_the_answer():
    from instructglm.generation import StopText

    def per_piece(n):
        stop = StopText(("### Instruction:", "### Response:"), strip=True)
        for _ in range(n):
            stop.feed("word ")
        start = time.perf_counter()
        for _ in range(2000):
            stop.feed("word ")
        return time.perf_counter() - start

    short, long_ = min(per_piece(100) for _ in range(3)), min(per_piece(20_000) for _ in range(3))
    assert long_ < 3 * short + 0.01, (short, long_)  # re-scanning the whole answer would be ~100x slower


@pytest.mark.parametrize("loop", ["continuous", "wave"])
def test_a_row_that_cannot_be_sampled_or_shown_fails_alone(tiny_models, loop):
    """A top_p that is 0 in float32 (set past the checks, as a bug could) makes torch's draw fail for
    the whole batch, and a row whose text fails mid-answer raises: each such row ends through its
    ``on_error`` and the others answer exactly what they answer alone."""
    import torch

    engine = _engine(tiny_models("llama"))
    prompts = [engine.text_ids(q) for q in ("Hello there", "Who are you?", "Hi", "What is the capital of France?")]
    rows = [Row(p, TextStream(engine.tokenizer, max_tokens=10)) for p in prompts]
    unsampleable = SamplingConfig(temperature=1.0)
    unsampleable.top_p = 1e-300  # what the checks refuse; torch.multinomial fails on the all-zero row
    rows[1].sampling = unsampleable
    push = rows[3].stream.push
    rows[3].stream.push = lambda token: push(token) if rows[3].stream.tokens < 4 else 1 / 0
    failed, ended = {}, []
    for i, row in enumerate(rows):
        row.on_error = lambda e, i=i: failed.setdefault(i, e)
        row.on_end = lambda i=i: ended.append(i)
    if loop == "wave":
        engine.decode(rows, torch.Generator().manual_seed(0))
    else:
        batch = DecodeBatch(engine, torch.Generator().manual_seed(0))
        batch.admit(rows)
        while len(batch):
            if batch.prefilling:
                batch.prefill_step()
            if batch.running is not None:
                batch.decode_step()
    assert sorted(failed) == [1, 3] and isinstance(failed[1], RuntimeError) and isinstance(failed[3], ZeroDivisionError)
    assert sorted(ended) == [0, 2] and rows[3].stream.tokens == 4
    for i in (0, 2):
        assert rows[i].stream.text == engine.generate([prompts[i]], SamplingConfig(max_new_tokens=10), strip=False)[0]


def test_no_deprecated_cache_keyword(tiny_models, recwarn):
    """The engine passes the KV cache under the name the model's forward takes (``cache`` in current
    transformers), so no deprecation warning is raised or logged."""
    import logging

    import torch

    engine = _engine(tiny_models("gemma3"))
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    try:
        rows = [Row(engine.text_ids(q), TextStream(engine.tokenizer, max_tokens=4)) for q in ("Hi", "Who are you?")]
        engine.decode(rows[:1], torch.Generator())
        batch = DecodeBatch(engine, torch.Generator())
        batch.admit(rows[1:])
        while len(batch):
            batch.prefill_step() if batch.prefilling else batch.decode_step()
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [w for w in recwarn if "past_key_values" in str(w.message)]
    assert not [m for m in logged if "past_key_values" in m], logged


def test_row_lora_equals_peft_adapter_names_and_falls_back(tiny_models):
    """RowLoRA gives each row its adapter's logits (as PEFT's per-row ``adapter_names`` does) with the
    base rows untouched; adapters it does not cover (DoRA) leave it out."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from instructglm.generation.batch import PEFT_BASE, RowLoRA

    def peft_model(**extra):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_models("llama"))
        config = dict(target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM", **extra)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, **config), adapter_name="a1")
        model.add_adapter("a2", LoraConfig(r=8, lora_alpha=32, **config))
        return model.eval()

    model = peft_model()
    rows = ["a2", PEFT_BASE, "a1", "a2", PEFT_BASE]
    ids = torch.randint(3, 300, (len(rows), 7))
    with torch.inference_mode():
        want = model(input_ids=ids, adapter_names=rows).logits
        row_lora = RowLoRA.build(model)
        assert row_lora is RowLoRA.build(model)  # one per model: its hooks are registered once
        model.base_model.disable_adapter_layers()
        base = model(input_ids=ids).logits
        row_lora.mask = row_lora.masks(rows, ids.device)
        got = model(input_ids=ids).logits
        row_lora.mask = None
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert torch.equal(got[1], base[1]) and not torch.allclose(got[0], base[0])
    assert RowLoRA.build(peft_model(use_dora=True)) is None
