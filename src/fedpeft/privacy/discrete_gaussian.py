"""The discrete Gaussian N_Z(0, σ²): P(X = x) ∝ exp(-x² / (2σ²)) on the integers.

Distributed DP under secure aggregation adds integer noise before masking, so that it
survives the modular sum (Kairouz, Liu, Steinke 2021). The sampler is the rejection
sampler of Canonne, Kamath, Steinke 2020 (arXiv 2004.00010, Algorithm 3 over the discrete
Laplace of Algorithm 2), vectorised with numpy: candidates are drawn in batches and
accepted or rejected as arrays, with no per-coordinate Python loop.

Per candidate, with t = ⌊σ⌋ + 1:

1. discrete Laplace Y with P(Y = y) ∝ exp(-|y|/t): a magnitude X ≥ 0 with
   P(X = x) = (1 - e^{-1/t}) e^{-x/t} (a geometric variable), a fair sign, and the
   rejection of "negative zero" so that 0 is not counted twice (Algorithm 2's last step;
   Algorithm 2 builds the same X from a uniform remainder and a geometric quotient);
2. accept Y with probability exp(-(|Y| - σ²/t)² / (2σ²)) (Algorithm 3).

Exactness caveats. The paper's sampler is exact because it only ever flips Bernoulli
coins of rational bias. This one uses float64: the geometric magnitude comes from numpy's
``Generator.geometric`` (inversion of a 53-bit uniform for small success probability, a
search for large) and the acceptance test compares a 53-bit uniform with ``exp(...)``.
Each probability is therefore right to about 1e-16 relative, and tail events rarer than
about 2^-53 per candidate are distorted or never produced — far below what any statistic
can see, but this is *not* the paper's exact sampler, and floating-point side channels of
the kind Mironov 2012 exploited are not excluded. The randomness is numpy's PCG64, which
is not a cryptographic generator: pass a Generator seeded from OS entropy
(``np.random.default_rng()``), never the run's reproducible seed, for privacy noise.
``opendp`` 0.16's ``make_gaussian`` over integers is exact and is what the tests compare
against (it is about 20 µs per coordinate; ``bench/dp_sampler.py`` has both timings).
"""

from __future__ import annotations

import math

import numpy as np

#: Batch size bound per rejection pass (memory: a few arrays of this many int64/float64).
MAX_BATCH = 1 << 22


def _check_sigma(sigma: float) -> float:
    if not (isinstance(sigma, (int, float, np.floating)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"discrete Gaussian sigma must be finite and > 0, got {sigma!r}")
    return float(sigma)


def _support(scale: float) -> np.ndarray:
    """The integers within ``40·scale + 2`` of zero, as float64: the grid the sums over a
    pmf of width ``scale`` run on (40 widths out, a Gaussian factor is below e^-800)."""
    bound = math.ceil(40 * scale) + 2
    return np.arange(-bound, bound + 1, dtype=np.float64)


def acceptance_rate(sigma: float) -> float:
    """Probability that one candidate survives both rejections (the "negative zero" of
    the sign step and Algorithm 3's test), computed from the pmfs."""
    sigma = _check_sigma(sigma)
    t = math.floor(sigma) + 1
    y = _support(max(sigma, t))
    laplace = np.exp(-np.abs(y) / t)
    laplace /= laplace.sum()
    accept = np.exp(-((np.abs(y) - sigma * sigma / t) ** 2) / (2 * sigma * sigma))
    p_zero = -math.expm1(-1.0 / t)  # P(magnitude = 0)
    return float((laplace * accept).sum()) * (1.0 - 0.5 * p_zero)


def sample_discrete_gaussian(
    sigma: float, size: int | tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """``size`` independent draws of N_Z(0, sigma²) as int64 (see the module docstring)."""
    sigma = _check_sigma(sigma)
    shape = (size,) if isinstance(size, (int, np.integer)) else tuple(size)
    total = math.prod(shape)
    out = np.empty(total, dtype=np.int64)
    if total == 0:
        return out.reshape(shape)
    t = math.floor(sigma) + 1
    sigma2 = sigma * sigma
    p_geometric = -math.expm1(-1.0 / t)  # 1 - e^{-1/t}
    rate = acceptance_rate(sigma)
    filled = 0
    while filled < total:
        need = total - filled
        n = min(MAX_BATCH, int(need / rate * 1.05) + 64)
        magnitude = rng.geometric(p_geometric, size=n) - 1  # P(x) ∝ e^{-x/t}, x >= 0
        negative = rng.random(n) < 0.5
        y = np.where(negative, -magnitude, magnitude)
        keep = ~(negative & (magnitude == 0))
        excess = magnitude.astype(np.float64) - sigma2 / t
        keep &= rng.random(n) < np.exp(-(excess * excess) / (2.0 * sigma2))
        good = y[keep]
        take = min(good.size, need)
        out[filled : filled + take] = good[:take]
        filled += take
    return out.reshape(shape)


def integer_l2_bound(clip: float, scale: float, dimension: int) -> float:
    """A bound on ‖round(scale · x)‖₂ for any x with ‖x‖₂ ≤ ``clip``, whatever the rounding
    (nearest or stochastic: each coordinate moves by less than 1, so at most √d in L2):
    ``scale · clip + √dimension``. This is the ``l2_bound`` a distributed round's
    accounting needs; Kairouz–Liu–Steinke's conditional rounding (re-round until the norm
    is below a tighter bound) can enforce a smaller one, which the client must then check."""
    if not (clip > 0 and scale > 0 and dimension >= 1):
        raise ValueError(
            f"need clip, scale > 0 and dimension >= 1, got {clip}, {scale}, {dimension}"
        )
    return scale * clip + math.sqrt(dimension)


def discrete_gaussian_pmf(x: np.ndarray | int | float, sigma: float) -> np.ndarray:
    """P(X = x) for X ~ N_Z(0, sigma²), normalised (the sum runs to ±40σ, beyond which
    terms are below e^-800)."""
    sigma = _check_sigma(sigma)
    k = _support(sigma)
    norm = np.exp(-(k * k) / (2 * sigma * sigma)).sum()
    xf = np.asarray(x, dtype=np.float64)
    return np.exp(-(xf * xf) / (2 * sigma * sigma)) / norm


def discrete_gaussian_variance(sigma: float) -> float:
    """Var(X) for X ~ N_Z(0, sigma²) (below sigma² for small sigma, equal to it in the
    limit; Canonne–Kamath–Steinke 2020 show it never exceeds sigma²)."""
    sigma = _check_sigma(sigma)
    k = _support(sigma)
    return float((k * k * discrete_gaussian_pmf(k, sigma)).sum())
