"""The HTML report draws a preference run's rewards beside its loss curve (and nothing more for SFT)."""

from __future__ import annotations

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
