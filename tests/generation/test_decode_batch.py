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
    assert cache_supported(engine.model(input_ids=torch.tensor([prompts[0]]), use_cache=True).past_key_values)


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
