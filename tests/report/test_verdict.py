"""Verdict words come from the numbers: 2 standard errors separate 'within error' from a result."""

import math

import pytest

from mulfree.report import verdict as V


@pytest.mark.parametrize(
    "mean, se, n, sign",
    [
        (0.05, 0.02, 100, 1),  # 2.5 SE: measured, better
        (-0.05, 0.02, 100, -1),  # measured, worse
        (0.039, 0.02, 100, 0),  # 1.95 SE: within error
        (-0.04, 0.02, 100, 0),  # exactly 2 SE: still within (strictly beyond counts)
        (0.0, 0.0, 100, 0),  # identical items
        (0.3, math.nan, 1, 0),  # one item: no error estimate, nothing measured
    ],
    ids=["better", "worse", "within", "on-the-edge", "identical", "one-item"],
)
def test_difference_sign(mean, se, n, sign):
    assert V.Difference(mean, se, n).sign() == sign


def test_no_worse_claim():
    within, better, worse = (V.Difference(m, 0.01, 500) for m in (0.01, 0.05, -0.05))
    assert V.no_worse([within, better]) == V.AGREES
    assert V.no_worse([within, worse]) == V.DIFFERS  # one measured loss is enough
    assert V.no_worse([]) == V.NOT_MEASURED


def test_equal_claim_differs_in_either_direction():
    within, better, worse = (V.Difference(m, 0.01, 500) for m in (0.01, 0.05, -0.05))
    assert V.equal([within]) == V.AGREES
    assert V.equal([within, better]) == V.DIFFERS
    assert V.equal([worse]) == V.DIFFERS


def test_better_claim():
    within, better, worse = (V.Difference(m, 0.01, 500) for m in (0.01, 0.05, -0.05))
    assert V.better([better, within]) == V.AGREES
    assert V.better([within]) == V.WITHIN
    assert V.better([better, worse]) == V.DIFFERS


def test_percent_and_trend():
    assert V.percent_close(97.3, 95.0) == V.AGREES
    assert V.percent_close(51.5, 80.0) == V.DIFFERS
    assert V.monotone_trend([0.5, 0.2, 0.1]) == "narrows"
    assert V.monotone_trend([0.1, 0.2]) == "widens"
    assert V.monotone_trend([0.5, 0.1, 0.3]) == "mixed"
    assert V.monotone_trend([0.5]) == V.NOT_MEASURED
