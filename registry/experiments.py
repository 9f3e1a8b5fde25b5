"""Online experiments: per-arm figures and the decision (promote, roll back, continue). Pure functions.

The test is a mixture sequential probability ratio test (mSPRT, Johari, Pekelis & Walsh, "Always
valid inference", 2017) on the difference of two proportions, treatment minus control, with the
normal approximation: for estimated difference d and variance V = pA(1-pA)/nA + pB(1-pB)/nB and a
normal mixing distribution N(0, tau^2) over the true difference,

    Lambda = sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2)))

and the always-valid p-value is the running minimum of 1/Lambda over all looks so far (the caller
keeps it between evaluations). Rejecting when it falls to alpha keeps the false-positive rate at or
below alpha however often the experiment is looked at (daily DAG runs, a dashboard), which a plain
z-test repeated every day does not. `tau` is the size of difference the test is most sensitive to
(an absolute rate difference, e.g. 0.02 for two points of click-through).

Each impression is one Bernoulli trial per metric (clicked / carted / bought at least once).
Impressions of one customer are not independent, so with few customers per arm the test is
optimistic; the minimum sample guardrail is counted in impressions and should be set well above
a day's impressions of one heavy customer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Literal

Outcome = Literal["promote", "rollback", "continue"]
RATE_METRICS = ("ctr", "cart_rate", "conversion_rate")


@dataclass(frozen=True)
class ArmCounts:
    """What one arm's impressions led to: impressions with at least one attributed click (view),
    cart, purchase, and the attributed purchases' revenue."""

    impressions: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    revenue: float = 0.0

    def successes(self, metric: str) -> int:
        return {"ctr": self.clicks, "cart_rate": self.carts, "conversion_rate": self.purchases}[metric]


@dataclass(frozen=True)
class ArmFigures:
    impressions: int
    ctr: float
    cart_rate: float
    conversion_rate: float
    revenue_per_impression: float


def figures(counts: ArmCounts) -> ArmFigures:
    n = counts.impressions
    rate = (lambda x: x / n) if n else (lambda x: 0.0)
    return ArmFigures(n, rate(counts.clicks), rate(counts.carts), rate(counts.purchases), rate(counts.revenue))


@dataclass(frozen=True)
class Guardrails:
    """When the experiment may and must end, and what it is judged on."""

    min_impressions: int = 1000  # per tested arm, before any decision
    max_days: float = 14.0  # past this without a decision: roll back (the champion stays)
    metric: str = "ctr"  # primary metric: the winner must beat the control on it
    guardrail_metric: str = "conversion_rate"  # must not drop significantly in the treatment arm
    alpha: float = 0.05  # always-valid false-positive rate of each test
    tau: float = 0.02  # mixing scale of the mSPRT: the rate difference the test is tuned to

    def __post_init__(self) -> None:
        for name in (self.metric, self.guardrail_metric):
            if name not in RATE_METRICS:
                raise ValueError(f"metric {name!r} is not one of {RATE_METRICS}")
        if not 0 < self.alpha < 1 or self.tau <= 0 or self.min_impressions < 1 or self.max_days <= 0:
            raise ValueError(f"guardrails out of range: {self}")

    @classmethod
    def from_dict(cls, data: dict) -> "Guardrails":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown guardrail keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**known)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SequentialTest:
    """One look of the mSPRT: the difference treatment - control, its always-valid p-value (running
    minimum, including earlier looks) and the always-valid confidence interval of this look."""

    difference: float
    p_value: float
    low: float
    high: float


def msprt(control: tuple[int, int], treatment: tuple[int, int], tau: float, alpha: float,
          previous_p: float = 1.0) -> SequentialTest:
    """(successes, trials) per arm -> the mSPRT look; `previous_p` is the running p-value so far."""
    (xa, na), (xb, nb) = control, treatment
    if na <= 0 or nb <= 0:
        return SequentialTest(0.0, min(previous_p, 1.0), -1.0, 1.0)
    pa, pb = xa / na, xb / nb
    d = pb - pa
    # Variance floored at one success's worth per arm, so all-zero or all-one arms do not make V = 0.
    var = max(pa * (1 - pa), 1.0 / na) / na + max(pb * (1 - pb), 1.0 / nb) / nb
    t2 = tau * tau
    log_lambda = 0.5 * math.log(var / (var + t2)) + d * d * t2 / (2 * var * (var + t2))
    p = min(previous_p, 1.0, math.exp(-log_lambda))
    half = math.sqrt(max(var * (var + t2) / t2 * (-2 * math.log(alpha) - math.log(var / (var + t2))), 0.0))
    return SequentialTest(d, p, d - half, d + half)


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    winner: str | None  # the arm to serve from now on (promote: the treatment; rollback: the control)
    control: str
    treatment: str
    primary: SequentialTest | None = None
    guardrail: SequentialTest | None = None
    figures: dict[str, ArmFigures] = field(default_factory=dict)
    days: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def decide(counts: dict[str, ArmCounts], control: str, guardrails: Guardrails, started_at: datetime,
           now: datetime, previous: dict[str, float] | None = None) -> Decision:
    """The decision on a two-arm experiment from its counts so far.

    previous: running p-values of earlier looks ({"primary": p, "guardrail": p}); the result's tests
    carry the updated ones, which the caller stores for the next look.

    Order: below the minimum sample -> continue (or roll back past max_days); the guardrail metric
    significantly lower in the treatment -> roll back; primary metric significantly different ->
    promote the better treatment, or roll back a worse one; otherwise continue until max_days, then
    roll back (no evidence for the change: the champion stays).
    """
    arms = sorted(counts)
    if control not in counts or len(arms) != 2:
        raise ValueError(f"a decision needs two arms with control among them; got {arms}, control {control!r}")
    treatment = next(a for a in arms if a != control)
    previous = previous or {}
    days = (now - started_at).total_seconds() / 86400.0
    figs = {arm: figures(c) for arm, c in counts.items()}
    out_of_time = days >= guardrails.max_days
    base = {"control": control, "treatment": treatment, "figures": figs, "days": days}
    small = min(counts[control].impressions, counts[treatment].impressions)
    if small < guardrails.min_impressions:
        if out_of_time:
            return Decision("rollback", f"{days:.1f} days passed with only {small} impressions in the smaller "
                            f"arm (minimum {guardrails.min_impressions}); champion kept", control, **base)
        return Decision("continue", f"{small} of the minimum {guardrails.min_impressions} impressions per arm",
                        None, **base)

    def test(metric: str, key: str) -> SequentialTest:
        c, t = counts[control], counts[treatment]
        return msprt((c.successes(metric), c.impressions), (t.successes(metric), t.impressions),
                     guardrails.tau, guardrails.alpha, float(previous.get(key, 1.0)))

    primary, guard = test(guardrails.metric, "primary"), test(guardrails.guardrail_metric, "guardrail")
    base.update(primary=primary, guardrail=guard)
    alpha = guardrails.alpha
    if guard.p_value <= alpha and guard.difference < 0:
        return Decision("rollback", f"guardrail {guardrails.guardrail_metric} dropped by {-guard.difference:.4f} "
                        f"in {treatment} (always-valid p {guard.p_value:.3g} <= {alpha})", control, **base)
    if primary.p_value <= alpha:
        if primary.difference > 0:
            return Decision("promote", f"{treatment} beats {control} on {guardrails.metric} by "
                            f"{primary.difference:.4f} (always-valid p {primary.p_value:.3g} <= {alpha})",
                            treatment, **base)
        return Decision("rollback", f"{treatment} is worse than {control} on {guardrails.metric} by "
                        f"{-primary.difference:.4f} (always-valid p {primary.p_value:.3g} <= {alpha})",
                        control, **base)
    if out_of_time:
        return Decision("rollback", f"no significant difference on {guardrails.metric} after {days:.1f} days "
                        f"(always-valid p {primary.p_value:.3g}); champion kept", control, **base)
    return Decision("continue", f"no decision yet on {guardrails.metric} (always-valid p "
                    f"{primary.p_value:.3g} > {alpha})", None, **base)
