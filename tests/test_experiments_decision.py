"""The experiment decision: the mSPRT keeps its false-positive rate under repeated looks, finds real
differences, and the guardrails decide promote / roll back / continue as documented."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from registry.experiments import ArmCounts, Guardrails, decide, figures, msprt

START = datetime(2026, 3, 1, tzinfo=timezone.utc)
LOOKS = np.linspace(400, 8000, 20).astype(int)  # cumulative impressions per arm at each daily look


def _sequential_rejections(rate_a: float, rate_b: float, runs: int, seed: int, alpha: float = 0.05,
                           tau: float = 0.02) -> tuple[float, float]:
    """Fraction of runs in which (the mSPRT, a plain z-test) rejects at any of the looks."""
    rng = np.random.default_rng(seed)
    steps = np.diff(LOOKS, prepend=0)
    xa = rng.binomial(steps, rate_a, size=(runs, len(steps))).cumsum(axis=1)
    xb = rng.binomial(steps, rate_b, size=(runs, len(steps))).cumsum(axis=1)
    msprt_hits = z_hits = 0
    for r in range(runs):
        p = 1.0
        z_any = False
        for j, n in enumerate(LOOKS):
            p = msprt((int(xa[r, j]), int(n)), (int(xb[r, j]), int(n)), tau, alpha, p).p_value
            pa, pb = xa[r, j] / n, xb[r, j] / n
            pooled = (xa[r, j] + xb[r, j]) / (2 * n)
            se = np.sqrt(max(pooled * (1 - pooled), 1e-12) * 2 / n)
            z_any |= abs(pb - pa) / se > 1.959964
        msprt_hits += p <= alpha
        z_hits += z_any
    return msprt_hits / runs, z_hits / runs


def test_msprt_false_positive_rate_stays_at_alpha_over_many_seeds_and_looks() -> None:
    runs = 1500
    fpr, naive = _sequential_rejections(0.1, 0.1, runs, seed=7)
    tolerance = 3 * np.sqrt(0.05 * 0.95 / runs)
    assert fpr <= 0.05 + tolerance, f"mSPRT rejected {fpr:.3f} of A/A runs over 20 looks"
    # the correction matters: a z-test repeated at every look rejects far more often than alpha
    assert naive > 0.05 + tolerance, f"naive repeated z-test FPR {naive:.3f}"


def test_msprt_finds_a_real_difference() -> None:
    power, _ = _sequential_rejections(0.10, 0.13, 200, seed=3)
    assert power >= 0.9


def test_msprt_running_p_value_never_rises() -> None:
    first = msprt((150, 1000), (200, 1000), 0.02, 0.05)
    later = msprt((300, 2000), (300, 2000), 0.02, 0.05, first.p_value)
    assert later.p_value == first.p_value < 1.0
    assert later.low < 0 < later.high


def test_msprt_interval_excludes_zero_exactly_when_p_below_alpha() -> None:
    for xb in range(100, 200, 7):
        t = msprt((100, 1000), (xb, 1000), 0.02, 0.05)
        assert (t.p_value <= 0.05) == (t.low > 0 or t.high < 0)


def _counts(n: int, clicks: int, purchases: int) -> ArmCounts:
    return ArmCounts(impressions=n, clicks=clicks, carts=purchases, purchases=purchases, revenue=10.0 * purchases)


def test_figures_are_rates_per_impression() -> None:
    f = figures(ArmCounts(200, 50, 20, 10, 123.0))
    assert (f.ctr, f.cart_rate, f.conversion_rate, f.revenue_per_impression) == (0.25, 0.1, 0.05, 0.615)
    assert figures(ArmCounts()).ctr == 0.0


def test_decision_waits_for_the_minimum_sample_then_rolls_back_at_max_duration() -> None:
    g = Guardrails(min_impressions=1000, max_days=7)
    counts = {"champion": _counts(500, 50, 5), "challenger": _counts(500, 150, 15)}
    assert decide(counts, "champion", g, START, START + timedelta(days=1)).outcome == "continue"
    late = decide(counts, "champion", g, START, START + timedelta(days=8))
    assert (late.outcome, late.winner) == ("rollback", "champion")


def test_decision_promotes_a_better_treatment_and_rolls_back_a_worse_one() -> None:
    g = Guardrails(min_impressions=1000)
    better = decide({"champion": _counts(3000, 300, 30), "challenger": _counts(3000, 450, 45)},
                    "champion", g, START, START + timedelta(days=2))
    assert (better.outcome, better.winner, better.treatment) == ("promote", "challenger", "challenger")
    assert better.primary is not None and better.primary.low > 0
    worse = decide({"champion": _counts(3000, 450, 45), "challenger": _counts(3000, 300, 45)},
                   "champion", g, START, START + timedelta(days=2))
    assert (worse.outcome, worse.winner) == ("rollback", "champion")


def test_guardrail_drop_rolls_back_even_when_the_primary_metric_wins() -> None:
    g = Guardrails(min_impressions=1000, guardrail_metric="conversion_rate", tau=0.01)
    d = decide({"a": _counts(4000, 400, 200), "b": _counts(4000, 600, 80)}, "a", g, START,
               START + timedelta(days=1))
    assert d.outcome == "rollback" and "guardrail" in d.reason and d.winner == "a"


def test_no_decision_on_equal_arms_before_max_duration() -> None:
    d = decide({"a": _counts(5000, 500, 50), "b": _counts(5000, 505, 50)}, "a", Guardrails(), START,
               START + timedelta(days=3))
    assert d.outcome == "continue" and d.winner is None


def test_guardrails_reject_unknown_metrics_and_keys() -> None:
    with pytest.raises(ValueError, match="metric"):
        Guardrails(metric="revenue")
    with pytest.raises(ValueError, match="unknown guardrail keys"):
        Guardrails.from_dict({"min_sample": 3})
    with pytest.raises(ValueError, match="two arms"):
        decide({"a": ArmCounts()}, "a", Guardrails(), START, START)
