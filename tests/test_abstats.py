"""The statistics of ``digitrec ab status`` on synthetic counts."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest

from digitrec.abstats import (
    MIN_CORRECTIONS,
    ArmCounts,
    corrections_needed,
    render,
    summarize,
    wilson_interval,
)


def arm(
    corrections: int, right: int, requests: int = 1000, latencies_ms: Sequence[float] | None = None
) -> ArmCounts:
    """An arm with 1 client per 4 requests, confidence 0.9, 2 % flagged."""
    return ArmCounts(
        requests=requests,
        clients=requests // 4,
        corrections=corrections,
        right=right,
        confidence_sum=0.9 * requests,
        flagged=requests // 50,
        latencies_ms=np.linspace(10.0, 50.0, 101) if latencies_ms is None else latencies_ms,
    )


def test_wilson_interval_matches_the_formula_by_hand() -> None:
    # 8 right of 10, z = 1.959964: centre (p + z^2/2n) / (1 + z^2/n), half-width
    # z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    # 0 of 10: the interval starts at 0 and is not degenerate (unlike the Wald one)
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12)
    assert high == pytest.approx(0.2775, abs=1e-4)


def test_arm_figures() -> None:
    report = summarize(arm(500, 400), arm(500, 475, requests=200))
    prod, cand = report.arms["production"], report.arms["candidate"]
    assert (prod.requests, prod.clients, prod.corrections) == (1000, 250, 500)
    assert prod.accuracy == 0.8
    assert prod.accuracy_low is not None and prod.accuracy_high is not None
    assert prod.accuracy_low < 0.8 < prod.accuracy_high
    assert prod.mean_confidence == 0.9
    assert prod.flagged_share == 0.02
    assert cand.flagged_share == 0.02 and cand.accuracy == 0.95
    # 101 evenly spaced latencies from 10 to 50 ms: p50 = 30, p95 = 48
    assert (prod.latency_p50_ms, prod.latency_p95_ms) == (30.0, 48.0)


def test_latency_percentiles_of_a_plain_list_and_of_nothing() -> None:
    shuffled = [float(x) for x in (7, 20, 0, 13, 4, 19, 1, 16, 10, 2, 11)]  # median 10
    report = summarize(arm(0, 0, latencies_ms=shuffled), arm(0, 0, latencies_ms=[]))
    # sorted, p95 lies at position 0.95 * 10 = 9.5, halfway between 19 and 20
    assert report.arms["production"].latency_p50_ms == 10.0
    assert report.arms["production"].latency_p95_ms == 19.5
    assert report.arms["candidate"].latency_p50_ms is None


def test_clearly_better_candidate() -> None:
    report = summarize(arm(500, 400), arm(500, 475))
    assert report.verdict == "better"
    assert report.needed_corrections is None
    assert report.test is not None
    assert report.test.name == "two-proportion z-test"
    assert report.test.p_value < 1e-6
    assert report.test.difference == pytest.approx(0.15)
    assert report.test.difference_low < 0.15 < report.test.difference_high
    assert report.test.difference_low > 0
    assert "candidate is better" in report.message
    assert "z-test" in report.message


def test_clearly_worse_candidate() -> None:
    report = summarize(arm(500, 475), arm(500, 400))
    assert report.verdict == "worse"
    assert report.test is not None and report.test.difference_high < 0
    assert "candidate is worse" in report.message


def test_equal_rates_claim_no_difference() -> None:
    report = summarize(arm(200, 180), arm(200, 180))
    assert report.verdict == "not_enough_data"
    assert report.needed_corrections is None
    assert report.test is not None and report.test.difference == 0
    assert report.test.p_value == pytest.approx(1.0)
    assert "no difference observed" in report.message
    assert "better" not in report.message and "worse" not in report.message


def test_small_difference_asks_for_a_finite_number_of_corrections() -> None:
    report = summarize(arm(200, 180), arm(200, 186))  # 90 % vs 93 %
    assert report.verdict == "not_enough_data"
    target = corrections_needed(0.90, 0.93)
    assert target is not None
    assert report.needed_corrections == target - 200
    assert 500 < target < 2000  # about 1,300 per arm for 90 % vs 93 %
    assert f"about {report.needed_corrections:,} more" in report.message
    assert f"({target:,} per arm)" in report.message
    assert "not a significant difference" in report.message


def test_tiny_counts_use_fisher_and_the_minimum_rule() -> None:
    report = summarize(arm(8, 2), arm(8, 8))  # a big difference on tiny counts
    assert report.test is not None
    assert report.test.name == "Fisher's exact test"
    assert report.test.p_value < 0.05  # significant, yet below the minimum
    assert report.verdict == "not_enough_data"
    assert report.needed_corrections == MIN_CORRECTIONS - 8
    assert f"at least {MIN_CORRECTIONS}" in report.message
    json.dumps(report.to_dict(), allow_nan=False)  # infinite odds ratio becomes null


def test_fisher_for_few_wrong_answers_above_the_minimum() -> None:
    report = summarize(arm(40, 39), arm(40, 36))
    assert report.test is not None and report.test.name == "Fisher's exact test"
    assert report.verdict == "not_enough_data"
    assert report.needed_corrections is not None
    assert math.isfinite(report.needed_corrections) and report.needed_corrections > 0


def test_no_corrections_yet() -> None:
    report = summarize(arm(0, 0), arm(0, 0, requests=0, latencies_ms=[]))
    assert report.verdict == "not_enough_data"
    assert report.test is None and report.needed_corrections is None
    assert report.message == (
        "Not enough data yet: no corrections on the production or candidate arm so far."
    )
    cand = report.arms["candidate"]
    assert cand.accuracy is None and cand.mean_confidence is None
    assert "-" in render(report)
    json.dumps(report.to_dict(), allow_nan=False)


def test_one_arm_without_corrections() -> None:
    report = summarize(arm(100, 90), arm(0, 0))
    assert report.test is None and report.verdict == "not_enough_data"
    assert "candidate arm" in report.message


def test_to_dict_is_json() -> None:
    report = summarize(arm(500, 400), arm(500, 475))
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["verdict"] == "better"
    assert data["arms"]["candidate"]["accuracy"] == 0.95
    assert data["test"]["name"] == "two-proportion z-test"
    assert data["min_corrections"] == MIN_CORRECTIONS


def test_render_shows_both_arms_and_the_verdict() -> None:
    report = summarize(arm(500, 400), arm(500, 475))
    text = render(report)
    header = text.splitlines()[0]
    assert "production" in header and "candidate" in header
    assert "verdict: better" in text
    assert "80.0 %" in text and "95.0 %" in text
    assert "two-proportion z-test" in text
    widths = {len(line) for line in text.splitlines()[:10]}
    assert len(widths) == 1  # fixed-width table


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        arm(10, 11)
    with pytest.raises(ValueError, match="negative"):
        arm(-1, 0)
