"""The HTML report draws a preference run's rewards beside its loss curve (and nothing more for SFT)."""

from __future__ import annotations

import pytest

from instructglm.report.report import loss_svg


def test_rewards_chart_beside_the_loss_curve():
    log = [{"step": s, "loss": 0.7 - 0.1 * s, "rewards_chosen": 0.2 * s, "rewards_rejected": -0.3 * s,
            "reward_margin": 0.5 * s, "reward_accuracy": 0.5 + 0.1 * s} for s in range(1, 4)]
    svg = loss_svg(log)
    assert svg.count("<svg") == 2 and "Rewards" in svg and "rejected reward" in svg
    assert "step 3: margin 1.5000, accuracy 0.80" in svg
    assert 'text-anchor="end">-1' in svg  # the value axis reaches below 0 for the rejected rewards
    sft = loss_svg([{"step": s, "loss": 1.0 / s} for s in range(1, 4)])
    assert sft.count("<svg") == 1 and "Rewards" not in sft


def _pref_run(path):
    """A preference run's output dir: rewards in the log and the saved ``eval`` of held-out pairs."""
    from instructglm.files import write_json, write_jsonl

    path.mkdir(parents=True)
    write_jsonl(path / "trainer_log.jsonl", [{"step": s, "loss": 0.69 - 0.1 * s, "rewards_chosen": 0.1 * s,
                                              "rewards_rejected": -0.1 * s, "reward_margin": 0.2 * s,
                                              "reward_accuracy": 0.5} for s in (1, 2)])
    result = {"kind": "preference", "data": "held-out.jsonl", "n": 40, "template": "alpaca",
              "systems": {"base": {"n": 40, "accuracy": 35.0, "mean_margin": -0.2514},
                          "tuned": {"n": 40, "accuracy": 92.5, "mean_margin": 1.0321}},
              "delta": {"tuned": {"accuracy": 57.5, "mean_margin": 1.2835}}}
    write_json(path / "preference_eval.json", result)
    return result


def test_report_shows_preference_accuracy_base_vs_tuned_and_answers(tmp_path):
    from instructglm.files import write_jsonl
    from instructglm.report.report import ReportConfig, write_report

    run = tmp_path / "dpo"
    _pref_run(run)
    write_jsonl(tmp_path / "preds.jsonl", [{"index": 0, "prompt": "中国的首都是哪里？", "reference": "北京",
                                            "prediction": "北京", "base_prediction": "中国的首都是哪里？"}])
    page = write_report(ReportConfig(run_dir=str(run), predictions=str(tmp_path / "preds.jsonl"))).read_text()
    section = page.split('<section id="preference">')[1].split("</section>")[0]
    assert "<th>base</th><th>tuned</th><th>&Delta; tuned</th>" in section
    assert '<td class="num">35.0</td><td class="num">92.5</td><td class="num">+57.5</td>' in section
    assert '<td class="num">-0.2514</td><td class="num">1.0321</td><td class="num">+1.2835</td>' in section
    assert "40 held-out pairs" in section
    assert "preference accuracy</div><div class=\"v\">35.0% &rarr; 92.5%" in page  # the summary card
    assert "Rewards" in page and 'id="answers"' in page and 'id="metrics"' in page  # side by side as for SFT
    assert page.count('class="text answer ok"') == 1 and "中国的首都是哪里？" in page


def test_preference_report_without_answers_and_the_flag(tmp_path):
    from instructglm.errors import UserError
    from instructglm.files import write_json
    from instructglm.report.report import ReportConfig, write_report

    run = tmp_path / "dpo"
    result = _pref_run(run)
    (run / "preference_eval.json").rename(tmp_path / "elsewhere.json")
    page = write_report(ReportConfig(run_dir=str(run))).read_text()
    assert 'id="preference"' not in page  # none saved beside the run
    page = write_report(ReportConfig(run_dir=str(run), preference_eval=str(tmp_path / "elsewhere.json"))).read_text()
    assert 'id="preference"' in page and 'id="metrics"' not in page  # no answers: no text metrics to show
    assert f'<td class="num">{result["systems"]["tuned"]["accuracy"]:.1f}</td>' in page
    write_json(tmp_path / "sft.json", {"n": 3, "overall": {}})
    with pytest.raises(UserError, match="--preference-eval .*sft.json: not the output of 'instructglm eval'"):
        write_report(ReportConfig(run_dir=str(run), preference_eval=str(tmp_path / "sft.json")))
    with pytest.raises(UserError, match="--preference-eval .*missing.json: file not found"):
        write_report(ReportConfig(run_dir=str(run), preference_eval=str(tmp_path / "missing.json")))
