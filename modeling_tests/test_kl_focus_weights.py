"""benchmarks/kl_focus_weights.py: where a KL focus puts the weight, from the teacher's top probabilities."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kl_focus_weights as kfw  # noqa: E402


def test_the_summary_weighs_unsure_tokens_by_one_plus_focus_times_the_missing_top_probability():
    p = torch.tensor([1.0, 0.9, 0.5, 0.2])  # two sure tokens, two unsure (under 0.6)
    r = kfw.weight_summary(p, 2.0, [0.4, 0.5, 0.1])
    w = [1.0, 1.2, 2.0, 2.6]
    assert r["mean_w"] == pytest.approx(sum(w) / 4)
    assert r["unsure_token_share"] == 0.5 and r["unsure_weight_share"] == pytest.approx(4.6 / 6.8)
    assert r["parting_w_median"] == pytest.approx(2.2)  # the middle of 1.8 (p 0.5), 2.2 (0.4), 2.8 (0.1)
    plain = kfw.weight_summary(p, 0.0, [0.4])
    assert plain["mean_w"] == 1.0 and plain["unsure_weight_share"] == 0.5 and plain["parting_w_median"] == 1.0
