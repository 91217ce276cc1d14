"""The statistics a study's verdicts rest on: per-arm spread, paired differences over seeds,
a 95% confidence interval, and Holm's correction across the study's comparisons.

Arms of one study share their seeds (seed s of every arm starts from the same weights and
sees the same data order), so a comparison pairs them seed by seed: the seed-to-seed
variance common to both arms cancels, and what is left is the effect plus the noise of the
difference. With n pairs the test is Student's t on the n differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
MIN_SPREAD = 1e-9  # differences closer than this are treated as having no spread
NOT_RESOLVED = "not resolved at this power"


@dataclass(frozen=True)
class ArmSummary:
    mean: float
    std: float  # sample standard deviation over seeds (ddof 1); nan for one seed
    n: int


@dataclass(frozen=True)
class PairedDifference:
    """a - b over the seeds both arms finished."""

    mean: float
    low: float  # 95% confidence interval of the mean difference
    high: float
    p: float  # two-sided paired t-test, before correction
    n: int


def summarise_arm(values: list[float]) -> ArmSummary:
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("an arm needs at least one finished run to be summarised")
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return ArmSummary(float(array.mean()), std, int(array.size))


def paired_difference(a: dict[int, float], b: dict[int, float]) -> PairedDifference:
    """Mean of a[s] - b[s] over the seeds in both, its 95% t interval and p-value.

    Fewer than two pairs, or differences with no spread (every seed the same difference, as a
    deterministic metric or a tie gives), cannot be tested: no interval and p = nan, so no
    verdict. Non-finite values are left out."""
    seeds = sorted(s for s in set(a) & set(b) if math.isfinite(a[s]) and math.isfinite(b[s]))
    differences = np.asarray([a[s] - b[s] for s in seeds], dtype=float)
    n = int(differences.size)
    mean = float(differences.mean()) if n else math.nan
    spread = float(differences.std(ddof=1)) if n > 1 else 0.0
    if n < 2 or spread <= MIN_SPREAD:  # untestable: no pairs, or no spread to scale by
        return PairedDifference(mean, math.nan, math.nan, math.nan, n)
    half_width = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * spread / math.sqrt(n)
    t_value = mean / (spread / math.sqrt(n))
    p = float(2 * stats.t.sf(abs(t_value), n - 1))
    return PairedDifference(mean, mean - half_width, mean + half_width, p, n)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (monotone, capped at 1). An
    untestable comparison (p = nan) stays nan and does not count among the m tests."""
    tested = [i for i, p in enumerate(p_values) if math.isfinite(p)]
    order = sorted(tested, key=lambda i: p_values[i])
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (len(tested) - rank) * p_values[index])
        adjusted[index] = min(1.0, running)
    return adjusted


def verdict(name_a: str, name_b: str, difference: PairedDifference, adjusted_p: float) -> str:
    """What the numbers resolve: a direction when the Holm-adjusted p is under 0.05."""
    if not math.isfinite(adjusted_p) or adjusted_p >= ALPHA:
        return NOT_RESOLVED
    sign = ">" if difference.mean > 0 else "<"
    return f"resolved: {name_a} {sign} {name_b}"
