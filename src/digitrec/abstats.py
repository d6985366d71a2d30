"""The statistics behind ``digitrec ab status``: per-arm figures, a test, a verdict.

Pure functions over plain numbers: :func:`summarize` turns one :class:`ArmCounts` per
arm into an :class:`ABReport` (figures per arm, a named test of the difference in online
accuracy, a verdict and a sentence for people); :func:`render` prints it as a table.
Online accuracy is the share of corrected predictions whose served answer was right.
The tests come from statsmodels and scipy; nothing here reads the database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.stats import fisher_exact
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)

ARMS = ("production", "candidate")  # the two arms of an experiment, in display order
ALPHA = 0.05  # significance level of the test and of every interval (95 %)
POWER = 0.8  # power the "how many more corrections" estimate aims for
MIN_CORRECTIONS = 30  # corrections each arm needs before any verdict
FISHER_BELOW = 5.0  # smallest expected 2x2 cell count for the z-test; Fisher's below it

Verdict = Literal["better", "worse", "not_enough_data"]


@dataclass(frozen=True)
class ArmCounts:
    """What one arm of an experiment has seen so far (the input of :func:`summarize`)."""

    requests: int  # answers served on this arm
    clients: int  # distinct client hashes among them
    corrections: int  # answers users corrected (or confirmed)
    right: int  # corrected answers that were right
    confidence_sum: float  # sum of the served answers' confidence
    flagged: int  # answers whose verdict was not "digit"
    latencies_ms: Sequence[float] | npt.NDArray[np.floating[Any]] = ()

    def __post_init__(self) -> None:
        counts = (self.requests, self.clients, self.corrections, self.right, self.flagged)
        if min(counts) < 0:
            raise ValueError(f"counts must not be negative: {counts}")
        if self.right > self.corrections:
            raise ValueError(f"right ({self.right}) exceeds corrections ({self.corrections})")


@dataclass(frozen=True)
class ArmSummary:
    """The figures ``ab status`` shows for one arm; None where there is nothing to show."""

    arm: str
    requests: int
    clients: int
    corrections: int
    right: int
    accuracy: float | None  # right / corrections
    accuracy_low: float | None  # Wilson 95 % interval
    accuracy_high: float | None
    mean_confidence: float | None
    flagged_share: float | None  # share of requests flagged not-a-digit
    latency_p50_ms: float | None
    latency_p95_ms: float | None


@dataclass(frozen=True)
class TestResult:
    """A test of candidate accuracy minus production accuracy."""

    __test__ = False  # not a pytest test class

    name: str  # "two-proportion z-test" or "Fisher's exact test"
    statistic_name: str  # "z" or "odds ratio"
    statistic: float | None  # None where undefined (e.g. an infinite odds ratio)
    p_value: float
    difference: float  # candidate accuracy - production accuracy
    difference_low: float  # Newcombe (Wilson-based) 95 % interval of the difference
    difference_high: float


@dataclass(frozen=True)
class ABReport:
    """Everything ``ab status`` prints; :meth:`to_dict` is its ``--json`` form."""

    arms: dict[str, ArmSummary]
    test: TestResult | None  # None until both arms have corrections
    verdict: Verdict
    needed_corrections: int | None  # more corrections per arm, when estimable
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "arms": {arm: asdict(s) for arm, s in self.arms.items()},
            "test": asdict(self.test) if self.test else None,
            "verdict": self.verdict,
            "needed_corrections": self.needed_corrections,
            "message": self.message,
            "alpha": ALPHA,
            "power": POWER,
            "min_corrections": MIN_CORRECTIONS,
        }


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def wilson_interval(right: int, n: int) -> tuple[float, float]:
    """The Wilson score interval (1 - ALPHA) of a proportion right / n (n > 0)."""
    low, high = proportion_confint(right, n, alpha=ALPHA, method="wilson")
    return float(low), float(high)


def summarize_arm(arm: str, counts: ArmCounts) -> ArmSummary:
    """The figures of one arm, rounded for display."""
    n, req = counts.corrections, counts.requests
    low, high = wilson_interval(counts.right, n) if n else (None, None)
    lat = np.asarray(counts.latencies_ms, dtype=np.float64)
    p50, p95 = (float(v) for v in np.percentile(lat, [50, 95])) if lat.size else (None, None)
    return ArmSummary(
        arm=arm,
        requests=req,
        clients=counts.clients,
        corrections=n,
        right=counts.right,
        accuracy=_round(counts.right / n, 4) if n else None,
        accuracy_low=_round(low, 4),
        accuracy_high=_round(high, 4),
        mean_confidence=_round(counts.confidence_sum / req, 4) if req else None,
        flagged_share=_round(counts.flagged / req, 4) if req else None,
        latency_p50_ms=_round(p50, 1),
        latency_p95_ms=_round(p95, 1),
    )


def _use_fisher(prod: ArmCounts, cand: ArmCounts) -> bool:
    """Cochran's rule: Fisher's exact test when an expected 2x2 cell count is below 5."""
    total = prod.corrections + cand.corrections
    right = prod.right + cand.right
    cols = (right, total - right)
    rows = (prod.corrections, cand.corrections)
    return min(r * c / total for r in rows for c in cols) < FISHER_BELOW


def compare(prod: ArmCounts, cand: ArmCounts) -> TestResult:
    """Test candidate against production online accuracy (both arms need corrections)."""
    if _use_fisher(prod, cand):
        table = [
            [cand.right, cand.corrections - cand.right],
            [prod.right, prod.corrections - prod.right],
        ]
        odds, p = fisher_exact(table, alternative="two-sided")
        name, stat_name, stat = "Fisher's exact test", "odds ratio", float(odds)
    else:
        z, p = proportions_ztest([cand.right, prod.right], [cand.corrections, prod.corrections])
        name, stat_name, stat = "two-proportion z-test", "z", float(z)
    low, high = confint_proportions_2indep(
        cand.right, cand.corrections, prod.right, prod.corrections, method="newcomb", alpha=ALPHA
    )  # compare="diff" by default: candidate minus production
    diff = cand.right / cand.corrections - prod.right / prod.corrections
    return TestResult(
        name=name,
        statistic_name=stat_name,
        statistic=_round(stat, 3),
        p_value=float(f"{float(p):.3g}"),
        difference=round(diff, 4),
        difference_low=round(float(low), 4),
        difference_high=round(float(high), 4),
    )


def corrections_needed(p_prod: float, p_cand: float) -> int | None:
    """Corrections per arm for a test at ALPHA to see this difference with POWER.

    None when the rates are equal: no difference observed, nothing to size for.
    """
    effect = abs(float(proportion_effectsize(p_cand, p_prod)))
    if effect < 1e-12:
        return None
    n = NormalIndPower().solve_power(effect_size=effect, alpha=ALPHA, power=POWER, ratio=1.0)
    return max(math.ceil(float(n)), MIN_CORRECTIONS)


def _decide(prod: ArmCounts, cand: ArmCounts, test: TestResult) -> tuple[Verdict, int | None]:
    """The verdict, and when undecided the extra corrections the smaller arm needs."""
    fewest = min(prod.corrections, cand.corrections)
    if fewest >= MIN_CORRECTIONS and test.p_value < ALPHA and test.difference != 0:
        return ("better" if test.difference > 0 else "worse"), None
    target = corrections_needed(prod.right / prod.corrections, cand.right / cand.corrections)
    if target is None:
        return "not_enough_data", None
    return "not_enough_data", max(target - fewest, 1)


def summarize(production: ArmCounts, candidate: ArmCounts) -> ABReport:
    """Figures per arm, the test, the verdict and one sentence for people."""
    arms = {
        "production": summarize_arm("production", production),
        "candidate": summarize_arm("candidate", candidate),
    }
    empty = [arm for arm, c in zip(ARMS, (production, candidate), strict=True) if not c.corrections]
    if empty:
        msg = f"Not enough data yet: no corrections on the {' or '.join(empty)} arm so far."
        return ABReport(arms, None, "not_enough_data", None, msg)
    test = compare(production, candidate)
    verdict, needed = _decide(production, candidate, test)
    return ABReport(arms, test, verdict, needed, _message(arms, test, verdict, needed))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _p(p: float) -> str:
    return "p < 0.0001" if p < 0.0001 else f"p = {p:.4g}"


def _message(
    arms: dict[str, ArmSummary], test: TestResult, verdict: Verdict, needed: int | None
) -> str:
    prod, cand = arms["production"], arms["candidate"]
    rates = f"{_pct(cand.accuracy)} vs {_pct(prod.accuracy)}"
    points = f"{100 * test.difference:+.1f} points"
    if verdict != "not_enough_data":
        return (
            f"The candidate is {verdict}: online accuracy {rates} ({points}, "
            f"{test.name} {_p(test.p_value)})."
        )
    fewest = min(prod.corrections, cand.corrections)
    if needed is None:
        return (
            f"Not enough data yet: both arms are at {_pct(prod.accuracy)} so far, no "
            "difference observed, so the corrections needed cannot be estimated."
        )
    why = (
        f"each arm needs at least {MIN_CORRECTIONS} corrections (the smaller has {fewest})"
        if fewest < MIN_CORRECTIONS
        else f"{rates} is not a significant difference ({test.name} {_p(test.p_value)})"
    )
    return (
        f"Not enough data yet: {why}; about {needed:,} more corrections on the smaller arm "
        f"({fewest + needed:,} per arm) would tell whether {points} is real."
    )


_ROWS: tuple[tuple[str, str], ...] = (
    ("requests", "requests"),
    ("distinct clients", "clients"),
    ("corrections", "corrections"),
    ("online accuracy", "accuracy"),
    ("  95 % interval", "interval"),
    ("mean confidence", "mean_confidence"),
    ("flagged not-a-digit", "flagged_share"),
    ("latency p50 (ms)", "latency_p50_ms"),
    ("latency p95 (ms)", "latency_p95_ms"),
)


def _cell(s: ArmSummary, key: str) -> str:
    if key == "interval":
        if s.accuracy_low is None or s.accuracy_high is None:
            return "-"
        return f"{100 * s.accuracy_low:.1f}-{100 * s.accuracy_high:.1f} %"
    value = getattr(s, key)
    if value is None:
        return "-"
    if key in ("accuracy", "flagged_share"):
        return _pct(value)
    if key == "mean_confidence":
        return f"{value:.3f}"
    return f"{value:,}" if isinstance(value, int) else f"{value:.1f}"


def _test_lines(test: TestResult | None) -> list[str]:
    if test is None:
        return ["test: none yet (an arm has no corrections)"]
    stat = "undefined" if test.statistic is None else f"{test.statistic:g}"
    return [
        f"test: {test.name}, {test.statistic_name} = {stat}, {_p(test.p_value)}",
        f"difference (candidate - production): {100 * test.difference:+.1f} points "
        f"(95 % interval {100 * test.difference_low:+.1f} to {100 * test.difference_high:+.1f})",
    ]


def render(report: ABReport) -> str:
    """The terminal table of ``ab status``: fixed-width columns, no colour."""
    lines = [f"{'':<21}" + "".join(f"{arm:>16}" for arm in ARMS)]
    for label, key in _ROWS:
        cells = "".join(f"{_cell(report.arms[arm], key):>16}" for arm in ARMS)
        lines.append(f"{label:<21}{cells}")
    verdict = report.verdict.replace("_", " ")
    lines += ["", *_test_lines(report.test), f"verdict: {verdict}", report.message]
    return "\n".join(lines)
