"""An empirical privacy test of the release mechanisms: each runs many times on two neighbouring
datasets (one person added, so one cell changes by the declared bound), and a lower bound on
epsilon is read off the outcome histograms with Clopper-Pearson intervals. The bound must stay
within the claimed epsilon, and the same test must catch a planted bug that doubles the
sensitivity (the noise is calibrated to half of what one person can change).

OpenDP draws its noise from a cryptographic generator that cannot be seeded, so the datasets are
fixed and the test is made deterministic in practice by its confidence: the within-claim check
holds unless a one-in-a-million bound fails; the 95% bounds are computed too, and the planted bug
must be caught at both."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from scipy.stats import beta

from backbone.policy.dp_release import Query
from backbone.privacy import mechanisms

STRICT = 1e-6  # per bound: the within-claim check fails by chance about once in 10^12 runs
SAMPLES = 20_000


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval of a binomial proportion at confidence 1 - alpha."""
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def epsilon_lower_bound(neighbour: Sequence[float], base: Sequence[float], thresholds: Sequence[float], alpha: float) -> float:
    """The largest ln(P[M(D') in S] / P[M(D) in S]) the samples support at confidence 1 - alpha, over the
    declared events S = {x >= t} (Bonferroni over them): a lower bound on the mechanism's epsilon."""
    share = alpha / len(thresholds)
    best = 0.0
    for t in thresholds:
        p_low, _ = clopper_pearson(sum(x >= t for x in neighbour), len(neighbour), share)
        _, q_high = clopper_pearson(sum(x >= t for x in base), len(base), share)
        if p_low > 0:
            best = max(best, math.log(p_low / q_high))
    return best


def samples(query: Query, value: float, statistic: str, scale_bias: float = 1.0) -> list[float]:
    """`SAMPLES` independent releases of one cell holding `value`: a vector of copies, one noise each."""
    return mechanisms.noisy_vector(query, query.cost, [value] * SAMPLES, statistic, scale_bias=scale_bias).values


COUNT = Query.model_validate({"name": "c", "statistic": "count", "mechanism": "laplace", "cost": {"epsilon": 1.0},
                              "contributions": {"max_groups": 1, "max_rows_per_group": 1}})
SUM = Query.model_validate({"name": "s", "statistic": "sum", "field": "amount", "bounds": [0, 10], "mechanism": "laplace",
                            "cost": {"epsilon": 1.0}, "contributions": {"max_groups": 1, "max_rows_per_group": 1}})


@pytest.mark.parametrize(("query", "statistic", "base", "step", "thresholds"), [
    (COUNT, "count", 100.0, 1.0, (101, 102, 103)),  # one person adds one row to the cell
    (SUM, "sum", 1000.0, 10.0, (1010, 1020, 1030)),  # one person adds one value clipped to 10
], ids=["count, discrete Laplace", "sum, Laplace"])
def test_the_epsilon_measured_on_neighbouring_datasets_stays_within_the_claim(query: Query, statistic: str, base: float,
                                                                              step: float, thresholds: tuple) -> None:
    without, with_one = samples(query, base, statistic), samples(query, base + step, statistic)
    claim = query.cost.epsilon
    strict = epsilon_lower_bound(with_one, without, thresholds, STRICT)
    at_95 = epsilon_lower_bound(with_one, without, thresholds, 0.05)
    assert strict <= claim, (strict, at_95)
    assert at_95 > 0.5 * claim  # the test has the power to see most of the claimed loss


def test_the_same_test_catches_a_planted_bug_that_doubles_the_sensitivity() -> None:
    """Calibrated for one row per person while a person adds two (or, the same, noise at half the scale)."""
    without, with_one = samples(COUNT, 100.0, "count", scale_bias=0.5), samples(COUNT, 101.0, "count", scale_bias=0.5)
    assert epsilon_lower_bound(with_one, without, (101, 102, 103), 0.05) > COUNT.cost.epsilon
    assert epsilon_lower_bound(with_one, without, (101, 102, 103), STRICT) > COUNT.cost.epsilon
