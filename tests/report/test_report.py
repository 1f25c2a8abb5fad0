"""report: the self-contained HTML page built from a small synthetic run directory, both layouts, the CLI."""

import base64
import json
import subprocess
import sys

import pytest

from instructglm.errors import UserError
from instructglm.files import write_jsonl
from instructglm.report.report import ReportConfig, nice_ticks, write_report

LOG = [{"step": 5, "loss": 2.0, "lr": 1e-3}, {"step": 10, "loss": 1.5, "lr": 1e-3},
       {"step": 15, "loss": 0.75, "lr": 5e-4}, {"step": 15, "eval_loss": 0.9}]
REPORT_ROWS = [
    {"index": 0, "prompt": "### Instruction:\n法国的首都是哪里？\n\n### Response:\n", "reference": "巴黎",
     "prediction": "巴黎", "base_prediction": "巴黎市", "category": "capital"},
    {"index": 1, "prompt": "Say hi", "reference": "hi", "prediction": "<script>alert('x')</script>",
     "base_prediction": "Hi", "category": "greet"},
]


def _train_dir(path):
    path.mkdir(parents=True)
    write_jsonl(path / "trainer_log.jsonl", LOG)
    (path / "train_config.yaml").write_text("model: tiny-llama\nmethod: lora\nlora_rank: 8\n", encoding="utf-8")
    (path / "instructglm.json").write_text(json.dumps({"base_model": "tiny-llama", "method": "lora",
                                                       "template": "alpaca", "steps": 15}))


def test_report_demo_layout(tmp_path):
    _train_dir(tmp_path / "adapter")
    write_jsonl(tmp_path / "predictions.jsonl", REPORT_ROWS)
    path = write_report(ReportConfig(run_dir=str(tmp_path)))
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    # loss curve: inline SVG, one polyline vertex and one point per train-loss line, the eval point too
    assert "<svg" in page and page.count("<circle") == 3
    points = page.split('<polyline class="train" points="')[1].split('"')[0].split()
    assert len(points) == 3
    assert "step 10: loss 1.5000" in page and "step 15: eval loss 0.9000" in page
    # config and run info
    assert 'id="config"' in page and "lora_rank: 8" in page and "tiny-llama" in page
    # metrics table: tuned EM 50 (巴黎 right, the script wrong), base 0, delta +50
    assert 'id="metrics"' in page
    for text in ("exact match", "BLEU-4", "ROUGE-L", "By category", "+50.0"):
        assert text in page
    # side by side: Chinese kept as is, model output escaped, verdict classes
    assert 'id="answers"' in page and "法国的首都是哪里？" in page and "巴黎市" in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page
    assert page.count('class="text answer ok"') == 1          # tuned 巴黎
    assert page.count('class="text answer near"') == 1        # base "Hi" vs "hi"
    assert page.count('class="text answer bad"') == 2         # base 巴黎市, tuned <script>
    # self-contained: nothing fetched from elsewhere
    assert "<link" not in page and "@import" not in page and 'src="http' not in page
    assert '<meta charset="utf-8">' in page


def test_report_train_layout_with_predictions_flag(tmp_path):
    _train_dir(tmp_path / "out")
    write_jsonl(tmp_path / "preds.jsonl", REPORT_ROWS)
    path = write_report(ReportConfig(run_dir=str(tmp_path / "out"), predictions=str(tmp_path / "preds.jsonl"),
                                     output=str(tmp_path / "html" / "r.html"), title="My <run>", max_examples=1))
    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "html" / "r.html"
    assert "<title>My &lt;run&gt;</title>" in page and "lora_rank: 8" in page
    assert "Showing the first 1 of 2 rows" in page and "alert" not in page
    with pytest.raises(UserError, match="not found"):
        write_report(ReportConfig(run_dir=str(tmp_path / "out"), predictions=str(tmp_path / "nope.jsonl")))
    with pytest.raises(UserError, match="nothing to report"):
        write_report(ReportConfig(run_dir=str(tmp_path / "html")))


def test_report_falls_back_to_loss_png(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "train_config.yaml").write_text("model: m\n")
    png = b"\x89PNG\r\n\x1a\nnot-really-a-png"
    (tmp_path / "adapter" / "loss.png").write_bytes(png)
    page = write_report(ReportConfig(run_dir=str(tmp_path))).read_text(encoding="utf-8")
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page
    assert "<svg" not in page and "No predictions file" in page


def test_cli_report(tmp_path):
    _train_dir(tmp_path / "adapter")
    write_jsonl(tmp_path / "predictions.jsonl", REPORT_ROWS)
    proc = subprocess.run([sys.executable, "-m", "instructglm", "report", str(tmp_path), "-o", "x.html"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "x.html" in proc.stdout and (tmp_path / "x.html").is_file()


def test_nice_ticks():
    # range 2.213 over 5 ticks -> raw step 0.44 -> rounded up to 0.5
    assert nice_ticks(0, 2.213) == [0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert nice_ticks(0, 90) == [0, 20, 40, 60, 80, 100]


def test_report_shows_every_adapter_side_by_side(tmp_path):
    """infer --adapter law=... --adapter med=... --compare-base: one prediction_NAME column per adapter."""
    _train_dir(tmp_path / "adapter")
    rows = [{**{k: r[k] for k in ("index", "prompt", "reference", "base_prediction", "category")},
             "prediction_law": r["reference"], "prediction_med": "no idea"} for r in REPORT_ROWS]
    write_jsonl(tmp_path / "predictions.jsonl", rows)
    page = write_report(ReportConfig(run_dir=str(tmp_path))).read_text(encoding="utf-8")
    metrics = page.split('id="metrics"')[1].split("</table>")[0]
    heads = [h.split("<")[0] for h in metrics.split("<thead>")[1].split("</thead>")[0].split("<th>")[1:]]
    assert heads == ["metric", "base", "law", "med", "delta_law", "delta_med"]
    em_row = metrics.split("exact match</th>")[1].split("</tr>")[0]
    assert [c.split(">")[1].split("<")[0] for c in em_row.split("<td")[1:]] == [
        "0.0", "100.0", "0.0", "+100.0", "+0.0"]
    answers = page.split('id="answers"')[1]
    assert "<th>law</th><th>med</th><th>reference</th>" in answers
    assert answers.count('class="text answer ok"') == 2 and answers.count("no idea") == 2
    assert "0.0% &rarr; law 100.0%, med 0.0%" in page  # the summary card names each adapter
