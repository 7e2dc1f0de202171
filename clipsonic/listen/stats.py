"""Interval estimates for listening-test scores, without scipy.

`student_t_ppf` inverts the Student-t distribution function, written with the regularised
incomplete beta function (Numerical Recipes' continued fraction, evaluated with Lentz's method):
for t ≥ 0, P(T > t) = I_x(ν/2, 1/2) / 2 with x = ν / (ν + t²). The upper tail is computed directly,
so quantiles near 1 lose no precision to cancellation. Checked against tabulated quantiles
(tests/test_listen.py) to 1e-9.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_EPS = 1e-15
_TINY = 1e-300


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (converges fast for x < (a + 1) / (a + b + 2))."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta I_{x}({a}, {b}) did not converge")


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"incomplete_beta needs a, b > 0 and 0 <= x <= 1, not a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` > 0 degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be positive, not {df}")
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def _student_t_pdf(t: float, df: float) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))


def student_t_ppf(p: float, df: float) -> float:
    """The quantile t with P(T ≤ t) = p, for 0 < p < 1 and `df` > 0 (e.g. 0.975, 20 → 2.0860)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), not {p}")
    if p < 0.5:
        return -student_t_ppf(1.0 - p, df)
    if p == 0.5:
        return 0.0
    tail = 1.0 - p
    low, high = 0.0, 1.0
    while student_t_sf(high, df) > tail:  # bracket the root: the tail falls monotonically in t
        low, high = high, high * 2.0
    t = 0.5 * (low + high)
    for _ in range(200):  # Newton's step on the tail, kept inside the bracket (else bisect)
        excess = student_t_sf(t, df) - tail
        if excess > 0:
            low = t
        else:
            high = t
        step = excess / _student_t_pdf(t, df)
        if abs(step) <= 1e-14 * max(1.0, t):
            return t + step
        candidate = t + step
        t = candidate if low < candidate < high else 0.5 * (low + high)
        if high - low <= 1e-14 * max(1.0, high):
            return t
    return t


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the two-sided Student-t confidence interval of the mean of `values`;
    the half-width is NaN for fewer than two values."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return math.nan, math.nan
    mean = float(array.mean())
    if array.size < 2:
        return mean, math.nan
    spread = float(array.std(ddof=1)) / math.sqrt(array.size)
    return mean, student_t_ppf(0.5 + confidence / 2.0, array.size - 1) * spread


def bootstrap_interval(groups: Sequence[Sequence[float]], draws: int = 2000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the pooled mean when whole groups (listeners) are resampled with
    replacement: each of `draws` resamples picks len(groups) groups and averages all their values.
    (NaN, NaN) without values; a single group gives a zero-width interval."""
    groups = [np.asarray(group, dtype=np.float64) for group in groups if len(group)]
    if not groups or draws < 1:
        return math.nan, math.nan
    sums = np.array([group.sum() for group in groups])
    counts = np.array([group.size for group in groups], dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(groups), size=(draws, len(groups)))  # [draws, groups]
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)
