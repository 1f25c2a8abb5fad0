"""The board in headless Chromium (Debian's, driven by Playwright), on a tiny model, the way a person
uses it: upload a data file and see its format, rejects and preview; launch a 40-step training from
the form and watch the loss curve get points; stop it and resume it to the end; see it in Runs; chat
with the result (streamed); evaluate it and see the progress and the metrics table (readable names, the
CLI's keys); merge it and write GGUF; switch to Chinese: the labels, a CLI error explained in Chinese
above its own line, the metrics' Chinese names, the board's own error in Chinese.

Screenshots of every page go to ``$INSTRUCTGLM_ARTIFACTS/board/`` when that is set, else to
``board-screenshots/`` in pytest's temporary directory (the path is printed)."""

import json
import os
import time
from pathlib import Path

import pytest
from real_clients import chromium, missing

pytestmark = pytest.mark.browser
STEPS = 40  # long enough that Stop lands mid-run on a quiet machine (10 steps of a tiny model can finish first)


@pytest.fixture
def shots(tmp_path_factory):
    root = os.environ.get("INSTRUCTGLM_ARTIFACTS")
    folder = Path(root) / "board" if root else tmp_path_factory.getbasetemp() / "board-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"board screenshots in {folder}")
    return folder


def _data_file(tmp_path: Path) -> Path:
    rows = [{"instruction": "Who are you?", "input": "", "output": "I am a tiny model."},
            {"instruction": "把下面的英文转换成大写字母", "input": "good morning", "output": "GOOD MORNING"},
            {"instruction": "What is the capital of France?", "input": "", "output": "Paris"}] * 4
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(2, '{"instruction": ["not", "text"], "output": "x"}')  # line 3: rejected, with its reason
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_board_in_headless_chromium(make_board, tiny_models, tmp_path, shots):  # long because it is one story
    sync_api, exe = chromium("board browser test")
    model = tiny_models("llama")
    board, url = make_board()
    data = _data_file(tmp_path)
    started = time.time()

    def shot(name):  # each page's screenshot, and how long the story took to get there
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        print(f"{name}: {time.time() - started:.0f} s")
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=exe, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
        except Exception as e:  # noqa: BLE001 - a browser that cannot start here is an environment matter
            missing(f"chromium does not start: {e}", "board browser test")
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            outside = []  # the page must never reach beyond the board (offline: no CDN, fonts, telemetry)
            page.on("request", lambda req: outside.append(req.url) if not req.url.startswith(url) else None)
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready='1']")

            # ---- Data: upload, detected format, counts, rejects with FILE:LINE, preview with the trained span
            page.set_input_files("#data-file", str(data))
            page.fill("#data-model", model)
            page.fill("#data-maxlen", "128")
            page.click("#data-prepare")
            page.wait_for_function("() => document.getElementById('data-format').textContent === 'alpaca'",
                                   timeout=120_000)
            assert page.inner_text("#data-counts").startswith("12")
            assert "mixed.jsonl:3" in page.inner_text("#data-rejects")
            assert page.locator("#data-preview mark.trained").first.inner_text() == "I am a tiny model.<eos>"
            assert "instructglm convert" in page.inner_text("#data-commands")
            assert page.locator("#data-lengths .bar").count() >= 2  # the token-length histogram
            shot("1-data")

            # ---- Train: the form, the command it stands for, launch, live curve, stop, resume
            page.click("#data-use")
            for key, value in (("max_steps", str(STEPS)), ("logging_steps", "1"), ("save_steps", "2"),
                               ("per_device_train_batch_size", "2"), ("gradient_accumulation_steps", "2"),
                               ("learning_rate", "0.001")):
                page.fill(f"#opt-{key}", value)
            page.wait_for_function("() => document.getElementById('train-command').textContent.includes("
                                   "'--gradient-accumulation-steps 2')")
            page.fill("#opt-lora_rank", "eight")  # the CLI's own error, one line, in the page
            page.wait_for_function("() => document.getElementById('train-command').textContent.includes('lora_rank')")
            assert "expected int" in page.inner_text("#train-command")
            page.fill("#opt-lora_rank", "8")
            page.wait_for_function("() => document.getElementById('train-command').textContent.startsWith('instructglm')")
            command = page.inner_text("#train-command")
            assert command.startswith("instructglm train --dataset ") and f"--model {model}" in command
            assert page.locator("#train-form fieldset").count() >= 8  # every option group of TrainConfig
            assert page.locator("#train-form fieldset.folded[data-group=ptuning]").count() == 1  # not lora's
            assert page.locator("#train-form fieldset.folded[data-group=lora]").count() == 0
            page.click("#train-launch")
            page.wait_for_function("() => document.querySelectorAll('#train-loss circle.point').length >= 1",
                                   timeout=120_000)
            page.click("#train-stop")
            page.wait_for_function("() => document.getElementById('train-status').className.includes('stopped')",
                                   timeout=120_000)
            run = board.workdir / "runs" / "run1"
            points = page.locator("#train-loss circle.point").count()
            assert 1 <= points < STEPS and list(run.glob("checkpoint-*/.complete"))
            assert not (run / "instructglm.json").exists()
            shot("2-train-stopped")
            page.click("#train-resume")
            page.wait_for_function("() => document.getElementById('train-status').className.includes('finished')",
                                   timeout=180_000)
            assert page.locator("#train-loss circle.point").count() == STEPS
            assert "--resume latest" in page.inner_text("#train-command")
            assert f"trained {STEPS} steps" in page.inner_text("#train-log")
            shot("3-train-finished")

            # ---- Runs
            page.click("#tabs [data-tab=runs]")
            page.wait_for_selector("#runs-table tr[data-run=run1] td.finished")
            page.click("#runs-table tr[data-run=run1] button.write-report")  # instructglm report RUN
            page.wait_for_selector("#runs-table tr[data-run=run1] a[href$='report.html']", timeout=120_000)
            assert (board.workdir / "runs" / "run1" / "report.html").exists()
            page.click("#runs-table tr[data-run=run1] summary")
            assert "lora_rank: 8" in page.inner_text("#runs-table tr[data-run=run1] pre")
            shot("4-runs")

            # ---- Chat with the result: streamed
            page.click("#tabs [data-tab=chat]")
            page.wait_for_selector("#chat-adapters input[value=run1]")
            page.check("#chat-adapters input[value=run1]")
            page.click("#chat-load")
            page.wait_for_function("() => document.querySelectorAll('#chat-models input').length === 2",
                                   timeout=120_000)
            assert page.is_checked("#chat-models input[value=run1]")
            page.check("#chat-models input[value=base]")  # side by side: the same prompt to both
            page.evaluate("""() => { window.updates = 0; new MutationObserver((r) => window.updates += r.length)
                .observe(document.getElementById('chat-log'), {subtree: true, childList: true, characterData: true}); }""")
            page.fill("#chat-max", "12")
            page.fill("#chat-input", "Who are you?")
            page.press("#chat-input", "Enter")
            for name in ("run1", "base"):
                page.wait_for_selector(f".chat-col[data-model={name}] .msg.assistant[data-done='1']", timeout=60_000)
            assert page.inner_text(".chat-col[data-model=run1] .msg.assistant").strip()
            assert page.evaluate("window.updates") >= 4  # column, question, bubble, then the streamed text
            shot("5-chat")

            # ---- Evaluate: infer + eval, the metrics table
            page.click("#tabs [data-tab=eval]")
            page.wait_for_selector("#eval-run option[value=run1]", state="attached")
            page.select_option("#eval-run", "run1")
            page.select_option("#eval-data", str(board.workdir / "data" / "mixed.jsonl"))
            page.fill("#eval-limit", "4")
            page.fill("#eval-max", "8")
            page.click("#eval-start")
            page.wait_for_function("() => document.querySelectorAll('#eval-table tr').length > 3", timeout=180_000)
            heads = page.locator("#eval-table th").all_inner_texts()
            assert heads[1:] == ["base", "tuned", "Δ tuned"]
            assert "n = 4" in page.inner_text("#eval-table")
            metric = page.locator("#eval-table tr[data-metric=exact_match] td").first
            assert metric.inner_text().split() == ["Exact", "match", "exact_match"]  # readable, and the CLI's key
            assert "(exact_match)" in metric.get_attribute("title")
            assert page.inner_text("#eval-progress .text").startswith("100%")
            assert "metrics.json" in page.inner_text("#eval-written")
            shot("6-evaluate")

            # ---- Export: merge
            page.click("#tabs [data-tab=export]")
            page.wait_for_selector("#export-run option[value=run1]", state="attached")
            page.check("#export-gguf")
            page.select_option("#export-quant", "q8_0")
            page.click("#export-start")
            page.wait_for_function("() => document.getElementById('export-status').className.includes('done')",
                                   timeout=180_000)
            assert (board.workdir / "exports" / "run1" / "merged" / "config.json").exists()
            assert (board.workdir / "exports" / "run1" / "model.gguf").stat().st_size > 0
            assert "instructglm export" in page.inner_text("#export-commands")
            assert page.inner_text("#export-progress .text").startswith("100%")
            assert "model.gguf" in page.inner_text("#export-written")
            shot("7-export")

            # ---- Chinese
            page.click("#lang")
            page.click("#tabs [data-tab=train]")
            assert page.inner_text("#tabs [data-tab=data]") == "数据"
            assert page.inner_text("#train-launch") == "开始训练"
            assert "常规" in page.locator("#train-form legend").all_inner_texts()
            page.fill("#opt-lora_rank", "eight")  # a CLI error: what it means in Chinese, above its own line
            page.wait_for_function("() => document.getElementById('train-why').textContent.includes('类型')")
            assert "lora_rank" in page.inner_text("#train-command")
            shot("8-train-zh")
            page.click("#tabs [data-tab=eval]")
            assert "完全匹配" in page.inner_text("#eval-table") and "exact_match" in page.inner_text("#eval-table")
            assert page.inner_text("#eval-progress .text").startswith("100% · 完成")
            shot("9-evaluate-zh")
            page.click("#tabs [data-tab=data]")
            page.set_input_files("#data-file", [])
            page.fill("#data-path", str(tmp_path / "missing.json"))
            page.click("#data-prepare")  # the board's own error, written in Chinese
            page.wait_for_function("() => document.getElementById('error').textContent.includes('文件不存在')")
            shot("10-data-error-zh")
            assert not outside, outside
        except Exception:
            page.screenshot(path=str(shots / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
