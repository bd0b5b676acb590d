"""The OpenDP measurements of a release: sensitivity from the declared bounds, the noise scale
calibrated so that OpenDP's own privacy map of the bounded input stays within the query's cost,
the noisy cells, and the 95% accuracy published with each.

Neighbouring datasets differ by one privacy unit (a person, or a person in a window) with all
their rows. After bounding (`backbone.privacy.bounding`) one unit changes at most `max_groups`
cells, each count by at most `max_rows_per_group` and each clipped sum by that times the largest
absolute bound: L1 = groups x rows x bound, L2 = sqrt(groups) x rows x bound. Counts under Laplace
are integers with discrete Laplace noise (no floating-point attack surface); sums and Gaussian
noise are floats. A mean is a noisy sum over a noisy count, each spending half of the cost. A
quantile scores evenly spaced candidates per cell (OpenDP's private quantile), each cell spending
cost / max_groups, as one unit reaches at most that many cells.

OpenDP marks these constructors `contrib` (implemented and documented with proofs, not yet
vetted by its committee), so `enable_contrib()` turns that feature on, and only that one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import opendp.prelude as dp

from backbone.policy.dp_release import Cost, Query

ALPHA = 0.05  # accuracy is published as a 95% interval


def enable_contrib() -> None:
    """OpenDP's vector Laplace/Gaussian, its private quantile and zCDP->(epsilon, delta) conversion are `contrib`."""
    dp.enable_features("contrib")


@dataclass(slots=True, frozen=True)
class Noisy:
    """One statistic's noisy cells, the scale used, and the half-width of each cell's 95% interval."""

    values: list[float]
    scale: float
    accuracy: float | None  # None: quantiles (the candidate chosen, no interval)
    sensitivity: float
    spent: dict[str, float]  # what OpenDP's privacy map says this measurement costs


def _per_value_bound(query: Query) -> float:
    if query.statistic in {"count", "histogram"}:
        return 1.0
    low, high = query.bounds or (0.0, 0.0)
    return max(abs(low), abs(high))


def sensitivity(query: Query, statistic: str | None = None) -> tuple[float, float]:
    """(L1, L2) of the vector of cells after bounding, for `statistic` (default the query's own)."""
    kind = statistic or query.statistic
    bound = 1.0 if kind == "count" else _per_value_bound(query)
    groups, rows = query.contributions.max_groups, query.contributions.max_rows_per_group
    return groups * rows * bound, math.sqrt(groups) * rows * bound


def _measure(cost: Cost) -> Any:
    return dp.zero_concentrated_divergence() if cost.unit != "epsilon" else dp.max_divergence()


def _builder(query: Query, cost: Cost, integer: bool, l1: float, l2: float,
             scale_bias: float) -> tuple[Callable[[float], Any], Any, Any]:
    """(scale -> measurement, d_in, d_out) for a vector of cells under the query's mechanism."""
    if query.mechanism == "laplace":
        if integer:
            space = (dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l1_distance(T=dp.i64))
            d_in: Any = int(math.ceil(l1))
        else:
            space = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float))
            d_in = float(l1)
        return (lambda s: dp.m.make_laplace(*space, scale=s * scale_bias)), d_in, float(cost.epsilon or 0)
    space = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float))
    if cost.unit == "rho":
        return (lambda s: dp.m.make_gaussian(*space, scale=s * scale_bias)), float(l2), float(cost.rho or 0)
    delta = float(cost.delta or 0)

    def approximate(s: float) -> Any:
        return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(dp.m.make_gaussian(*space, scale=s * scale_bias)), delta)
    return approximate, float(l2), (float(cost.epsilon or 0), delta)


def _spent(measurement: Any, d_in: Any, cost: Cost) -> dict[str, float]:
    out = measurement.map(d_in)
    if cost.unit == "epsilon":
        return {"epsilon": float(out)}
    if cost.unit == "rho":
        return {"rho": float(out)}
    return {"epsilon": float(out[0]), "delta": float(out[1])}


def _accuracy(query: Query, cost: Cost, integer: bool, scale: float, alpha: float) -> float:
    if query.mechanism == "laplace":
        return dp.discrete_laplacian_scale_to_accuracy(scale, alpha) if integer else dp.laplacian_scale_to_accuracy(scale, alpha)
    return dp.gaussian_scale_to_accuracy(scale, alpha)


def noisy_vector(query: Query, cost: Cost, values: Sequence[float], statistic: str, *, alpha: float = ALPHA,
                 scale_bias: float = 1.0) -> Noisy:
    """`values` (true bounded cells) with noise calibrated to `cost` by OpenDP's privacy map.

    `scale_bias` multiplies the scale actually used without changing what is claimed: 1.0 always,
    except in the empirical privacy test, which plants a mechanism that is wrong on purpose."""
    enable_contrib()
    l1, l2 = sensitivity(query, statistic)
    integer = query.mechanism == "laplace" and statistic == "count"
    make, d_in, d_out = _builder(query, cost, integer, l1, l2, 1.0)
    scale = dp.binary_search_param(make, d_in=d_in, d_out=d_out, T=float)
    measurement = _builder(query, cost, integer, l1, l2, scale_bias)[0](scale)
    data = [int(round(v)) for v in values] if integer else [float(v) for v in values]
    released = [float(v) for v in measurement(data)] if data else []
    return Noisy(released, scale, _accuracy(query, cost, integer, scale, alpha), l1 if query.mechanism == "laplace" else l2,
                 _spent(make(scale), d_in, cost))


def halve(cost: Cost) -> Cost:
    return Cost(**{k: v / 2 for k, v in cost.parts().items()})


def per_cell(cost: Cost, cells: int) -> Cost:
    return Cost(**{k: v / cells for k, v in cost.parts().items()})


def noisy_quantiles(query: Query, cost: Cost, cells: Sequence[Sequence[float]]) -> Noisy:
    """The declared quantile of each cell's bounded values, by OpenDP's private quantile over
    evenly spaced candidates; each cell spends cost / max_groups."""
    enable_contrib()
    low, high = query.bounds or (0.0, 1.0)
    step = (high - low) / (query.candidates - 1)
    candidates = [low + i * step for i in range(query.candidates)]
    share = per_cell(cost, query.contributions.max_groups)
    measure = _measure(share)
    d_in = query.contributions.max_rows_per_group

    def make(s: float) -> Any:
        return dp.m.make_private_quantile(dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance(),
                                          measure, candidates=candidates, alpha=float(query.quantile or 0.5), scale=s)
    target = float(share.epsilon if share.unit == "epsilon" else share.rho or 0)
    scale = dp.binary_search_param(make, d_in=d_in, d_out=target, T=float)
    measurement = make(scale)
    released = [float(measurement([float(v) for v in values])) for values in cells]
    spent = float(measurement.map(d_in)) * query.contributions.max_groups
    return Noisy(released, scale, None, float(d_in), {"epsilon" if share.unit == "epsilon" else "rho": spent})
