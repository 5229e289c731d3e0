"""Plan a client-level DP run before it starts: the noise a budget puts on the mean update,
and the cohort it takes for that noise to stay small next to the clip.

Every number comes from :mod:`fedpeft.privacy.accountant`, with the settings a run would
use, so the plan's noise multiplier is the one the run's ``metrics.jsonl`` reports:

* **z** (``noise_multiplier``): dp-accounting's, the noise std on the *sum* over the sum's
  L2 sensitivity — C under Poisson sampling, 2C under fixed-size cohorts (replace one
  client; :data:`fedpeft.privacy.accountant.SENSITIVITY_FACTOR`). The std actually added
  to the sum is ``z · factor · C`` (``dp_noise_std``); the mean divides the sum by the
  public cohort size k, so its noise std is ``z · factor · C / k`` per coordinate.
* **noise-to-clip ratio**: ``σ_mean · √d / C``, the root mean square norm of the noise on
  the mean update (``√E‖noise‖²``; the expected norm is within ``1/(4d)`` of it) over the
  clip C, the largest norm the mean's signal can have. It does not depend on C:
  ``z · factor · √d / k``. At a ratio near 1 the noise is as large as the largest
  possible update; bench/results/dp_accuracy.json measured 0.553 accuracy at ε 8
  (ratio 1.22, 100 of 1,000 clients, d 6,914) against 0.689 without DP.
* **cohort for the target ratio**: the smallest cohort of the *same population* whose
  ratio is at most the target (0.5 unless told), recalibrating z at every cohort tried (a
  larger cohort samples each client more often, so a target ε needs more noise on the
  sum; the ratio still falls, since the mean divides by k). With sampling amplification
  the noise on the mean approaches a floor set by the population (z grows about like k),
  so a population can be too small for any cohort: the plan then says so, with the ratio
  at k = population.

Distributed DP (clients add discrete Gaussian noise under secure aggregation) is
accounted without amplification by sampling, with each client's noise sized for the
``ceil((1 - tolerated_dropout) · k)`` clients that must survive. The plan calibrates in
the integer domain at a nominal scale (:data:`NOMINAL_L2_BOUND`) where rounding and the
discrete Gaussian's τ terms are negligible: the run's own scale (set by ``secagg.bits``)
adds the rounding term ``√d / L`` to the noise relative to the clip, so the plan is its
lower bound. A fixed noise multiplier is taken as the user sets it (``dp.noise_multiplier``,
dp-accounting's z) in both modes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from fedpeft.errors import ConfigError
from fedpeft.privacy.accountant import (
    ACCOUNTANTS,
    CALIBRATION_TOL,
    SAMPLINGS,
    SENSITIVITY_FACTOR,
    RoundPrivacy,
    calibrate,
    calibrate_local_sigma,
    calibrate_noise_multiplier,
    epsilon,
    rounds_affordable,
)

#: ``dp.mode`` values a plan is made for (``auto`` is resolved by the caller)
MODES = ("central", "distributed")
#: Noise-to-clip ratio a plan asks the cohort to reach (the noise's norm on the mean at
#: most half the largest update the mean can hold)
TARGET_RATIO = 0.5
#: Integer-domain L2 bound of one client's update the distributed plan calibrates with:
#: large enough that each client's σ is far above 1 (the discrete Gaussian's τ terms
#: vanish) for any z ≥ 0.05 and up to a million noisy clients
NOMINAL_L2_BOUND = 2.0**20
#: Interpolated probes in the cohort search before it falls back to bisection
_MAX_GUESSES = 8


@dataclass(frozen=True)
class PlanSettings:
    """What a plan is for. Errors name the config key a run reads the value from."""

    population: int  # federation.clients
    cohort: int  # federation.clients_per_round (the expected cohort under Poisson)
    rounds: int  # federation.rounds
    clip: float  # dp.clip, C
    dimension: int  # coordinates per update, d
    epsilon: float | None = None  # dp.epsilon: the run's target
    delta: float = 1e-5  # dp.delta
    noise_multiplier: float | None = None  # dp.noise_multiplier: dp-accounting's z, fixed
    sampling: str = "fixed"  # federation.sampling
    mode: str = "central"  # dp.mode, resolved
    tolerated_dropout: float = 0.0  # secagg.tolerated_dropout (distributed)
    accountant: str = "rdp"  # dp.accountant

    def __post_init__(self) -> None:
        _integer("federation.clients", self.population, 1)
        _integer("federation.clients_per_round", self.cohort, 1)
        if self.cohort > self.population:
            raise ConfigError(
                "federation.clients_per_round",
                f"{self.cohort} clients per round but only {self.population} clients",
            )
        _integer("federation.rounds", self.rounds, 1)
        _integer("dimension", self.dimension, 1)
        _positive("dp.clip", self.clip)
        if self.epsilon is None and self.noise_multiplier is None:
            raise ConfigError(
                "dp.epsilon", "a plan needs a target epsilon or a noise multiplier (or both)"
            )
        if self.epsilon is not None:
            _positive("dp.epsilon", self.epsilon)
        if self.noise_multiplier is not None:
            _positive("dp.noise_multiplier", self.noise_multiplier)
        if not (math.isfinite(self.delta) and 0 < self.delta < 1.0 / self.population):
            raise ConfigError(
                "dp.delta",
                f"must be in (0, 1/clients = {1.0 / self.population:.3g}), got {self.delta!r}",
            )
        if self.sampling not in SAMPLINGS:
            raise ConfigError("federation.sampling", f"must be one of {SAMPLINGS}")
        if self.mode not in MODES:
            raise ConfigError("dp.mode", f"must be one of {MODES}, got {self.mode!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError("dp.accountant", f"must be one of {ACCOUNTANTS}")
        if not 0.0 <= self.tolerated_dropout < 1.0:
            raise ConfigError(
                "secagg.tolerated_dropout", f"must be in [0, 1), got {self.tolerated_dropout!r}"
            )

    @property
    def sensitivity_factor(self) -> float:
        """The sum's L2 sensitivity over C: 2 under fixed-size cohorts (replace one)."""
        return SENSITIVITY_FACTOR[self.sampling]

    @property
    def noisy_clients(self) -> int:
        """Clients whose noise reaches every completed sum: the cohort (central), or the
        fewest survivors secure aggregation accepts (distributed)."""
        if self.mode == "central":
            return self.cohort
        return max(1, math.ceil((1.0 - self.tolerated_dropout) * self.cohort))

    def with_cohort(self, cohort: int) -> PlanSettings:
        return replace(self, cohort=cohort)


def _integer(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(key, f"must be an integer >= {low}, got {value!r}")


def _positive(key: str, value: Any) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(key, f"must be > 0, got {value!r}")


# ----------------------------------------------------------------------------- numbers


def sum_noise_multiplier(s: PlanSettings) -> float:
    """Noise std on the sum over C (the library's internal z) that the run would use:
    calibrated for ``s.epsilon`` over ``s.rounds`` rounds, or the user's fixed z times the
    sensitivity factor. dp-accounting's z is this over :attr:`PlanSettings.sensitivity_factor`."""
    if s.noise_multiplier is not None:
        return s.noise_multiplier * s.sensitivity_factor
    assert s.epsilon is not None  # PlanSettings refuses neither
    if s.mode == "central":
        return calibrate_noise_multiplier(
            s.epsilon,
            s.delta,
            s.rounds,
            sampling=s.sampling,
            population=s.population,
            sample_size=s.cohort,
            accountant=s.accountant,
        )
    sigma = calibrate_local_sigma(
        s.epsilon,
        s.delta,
        s.rounds,
        sampling=s.sampling,
        population=s.population,
        sample_size=s.cohort,
        noisy_clients=s.noisy_clients,
        l2_bound=NOMINAL_L2_BOUND,
        dimension=s.dimension,
    )
    return math.sqrt(s.noisy_clients) * sigma / NOMINAL_L2_BOUND


def round_privacy(s: PlanSettings, z: float) -> RoundPrivacy:
    """One round at internal z (noise std on the sum / C), as the run's ledger records it."""
    if s.mode == "central":
        return RoundPrivacy(z, s.sampling, s.population, s.cohort)
    n = s.noisy_clients
    return RoundPrivacy.distributed(
        local_sigma=z * NOMINAL_L2_BOUND / math.sqrt(n),
        noisy_clients=n,
        l2_bound=NOMINAL_L2_BOUND,
        dimension=s.dimension,
        sampling=s.sampling,
        population=s.population,
        sample_size=s.cohort,
    )


def noise_to_clip(z: float, dimension: int, cohort: int) -> float:
    """RMS norm of the noise on the mean update over the clip: ``z · √d / k`` for internal
    z (noise std on the sum / C); C cancels."""
    return z * math.sqrt(dimension) / cohort


@dataclass(frozen=True)
class CohortSearch:
    """The smallest cohort of a population whose noise-to-clip ratio meets a target."""

    cohort: int | None  # None: not even every client in every round gets there
    noise_multiplier: float | None  # dp-accounting's z at that cohort
    ratio: float | None  # its ratio
    ratio_at_population: float  # the ratio with k = population: the floor of this population
    probes: int  # cohorts at which z was calibrated


class NoiseCurve:
    """Internal z (noise std on the sum / C) as a function of the cohort, for one
    population, budget and dimension; each value calibrated once.

    Calibrating a fixed-size cohort takes seconds (dp-accounting's RDP bound for sampling
    without replacement), so a cohort between two already calibrated ones is calibrated
    inside their bracket: z grows with the cohort (a larger cohort samples each client
    more often), so ``z(lo) <= z(k) <= z(hi)``, and a narrower bracket needs fewer
    accountant runs. The result is dp-accounting's smallest z to 0.001, as for the run."""

    def __init__(self, s: PlanSettings) -> None:
        self.settings = s
        self.values: dict[int, float] = {}

    def __call__(self, k: int) -> float:
        if k not in self.values:
            self.values[k] = self._calibrate(k)
        return self.values[k]

    def ratio(self, k: int) -> float:
        return noise_to_clip(self(k), self.settings.dimension, k)

    def _calibrate(self, k: int) -> float:
        s = self.settings.with_cohort(k)
        below = [z for c, z in self.values.items() if c < k]
        above = [z for c, z in self.values.items() if c > k]
        bracketed = s.mode == "central" and s.noise_multiplier is None and below and above
        if not bracketed:
            return sum_noise_multiplier(s)
        assert s.epsilon is not None  # PlanSettings refuses a plan with neither
        lo = max(0.05, max(below) - CALIBRATION_TOL)
        hi = min(above) + CALIBRATION_TOL
        try:
            return calibrate(
                lambda z: round_privacy(s, z),
                s.epsilon,
                s.delta,
                s.rounds,
                accountant=s.accountant,
                min_noise=lo,
                max_noise=hi,
            )
        except ConfigError:  # the bracket missed (not monotone here): search all of it
            return sum_noise_multiplier(s)


def smallest_cohort(
    s: PlanSettings, target: float = TARGET_RATIO, curve: NoiseCurve | None = None
) -> CohortSearch:
    """The smallest k in [1, population] with ``noise_to_clip(z(k), d, k) <= target``, z
    recalibrated at each k tried; the search ends with k - 1 evaluated and above the target.

    It keeps ``lo`` (above the target, or 0) and ``hi`` (at or below it) and probes where
    ``log ratio`` crosses ``log target`` on the chord between them in ``log k`` (the ratio
    is close to a power law of k), halving the weight of an end that stays put twice
    (the Illinois variant of regula falsi, so a curved ratio does not make it creep from
    one side); after :data:`_MAX_GUESSES` probes it bisects. ``curve`` may hold z already
    calibrated for these settings (the plan's own cohort)."""
    _positive("target ratio", target)
    curve = curve or NoiseCurve(s)
    n = s.population
    floor = curve.ratio(n)
    if floor > target:
        return CohortSearch(None, None, None, floor, len(curve.values))
    lo, hi = 0, n  # invariant: ratio(hi) <= target, and lo == 0 or ratio(lo) > target
    for k in sorted(curve.values):
        if curve.ratio(k) <= target:
            hi = min(hi, k)
        elif k < hi:
            lo = max(lo, k)
    gap = _Gap(target)
    probes = 0
    while hi - lo > 1:
        if lo == 0:
            probe = 1
        elif probes < _MAX_GUESSES:
            probe = gap.crossing(curve, lo, hi)
        else:
            probe = (lo + hi) // 2
        probes += 1
        if curve.ratio(probe) <= target:
            hi = probe
            gap.moved(+1)
        else:
            lo = probe
            gap.moved(-1)
    ratio = curve.ratio(hi)
    return CohortSearch(hi, curve(hi) / s.sensitivity_factor, ratio, floor, len(curve.values))


class _Gap:
    """Illinois regula falsi on ``f(k) = log(ratio(k) / target)`` over ``log k``."""

    def __init__(self, target: float) -> None:
        self.target = target
        self.last = 0  # which end moved last: +1 hi, -1 lo
        self.weight = {+1: 1.0, -1: 1.0}  # the stale end's f is scaled down

    def moved(self, end: int) -> None:
        if end == self.last:
            self.weight[-end] /= 2.0
        else:
            self.weight = {+1: 1.0, -1: 1.0}
        self.last = end

    def crossing(self, curve: NoiseCurve, lo: int, hi: int) -> int:
        f_lo = math.log(curve.ratio(lo) / self.target) * self.weight[-1]
        f_hi = math.log(curve.ratio(hi) / self.target) * self.weight[+1]
        x_lo, x_hi = math.log(lo), math.log(hi)
        x = x_lo - f_lo * (x_hi - x_lo) / (f_hi - f_lo) if f_hi < f_lo else (x_lo + x_hi) / 2
        return min(max(round(math.exp(x)), lo + 1), hi - 1)


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class DpPlan:
    """What a DP run's settings mean for its noise (module docstring)."""

    settings: PlanSettings
    noise_multiplier: float  # dp-accounting's z, as metrics.jsonl reports it
    noise_std_sum: float  # std of the noise on the sum, per coordinate (dp_noise_std)
    noise_std_mean: float  # ... on the mean update
    noise_to_clip: float  # RMS noise norm on the mean / C
    epsilon: float  # what the planned rounds spend at this noise
    rounds_affordable: int | None  # central, fixed z and a target: rounds before it stops
    search: CohortSearch | None  # None: not searched (the line at the start of a run)
    target_ratio: float = TARGET_RATIO

    @property
    def carries_noise(self) -> bool:
        """The planned cohort meets the target ratio."""
        return self.noise_to_clip <= self.target_ratio

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["carries_noise"] = self.carries_noise
        out["summary"] = self.summary()
        return out

    def summary(self) -> str:
        """The plan as one paragraph."""
        s = self.settings
        how = f"{s.cohort} of {s.population} clients per round" + (
            " (expected; Poisson sampling)" if s.sampling == "poisson" else ", fixed cohorts"
        )
        budget = f"epsilon {self.epsilon:.3g} at delta {s.delta:g}"
        if s.epsilon is not None and s.noise_multiplier is None:
            budget = f"target epsilon {s.epsilon:g} at delta {s.delta:g}"
        head = (
            f"DP plan ({s.mode}, {how}, {s.rounds} rounds, {budget}, clip {s.clip:g}, "
            f"d {s.dimension:,}): noise multiplier z = {self.noise_multiplier:.4g} "
            f"(dp-accounting's), noise std {self.noise_std_sum:.4g} on the sum and "
            f"{self.noise_std_mean:.4g} on the mean update; the noise's norm on the mean is "
            f"{self.noise_to_clip:.3g}x the clip"
        )
        if self.carries_noise:
            head += f" (at most {self.target_ratio:g}: the cohort carries the noise)."
        else:
            head += f", above {self.target_ratio:g}: the noise swamps the update."
        if self.rounds_affordable is not None and self.rounds_affordable < s.rounds:
            head += (
                f" This noise affords {self.rounds_affordable} of the {s.rounds} rounds "
                "before the budget stops the run."
            )
        found = self.search
        if found is None:
            tail = (
                ""
                if self.carries_noise
                else (" `fedpeft dp plan` finds the cohort that would carry it.")
            )
        elif found.cohort is None:
            tail = (
                f" No cohort of these {s.population:,} clients reaches {self.target_ratio:g}: "
                f"even all of them every round leaves {found.ratio_at_population:.3g}; it "
                "takes more clients, a larger epsilon, fewer rounds or a smaller adapter "
                "(the ratio grows with sqrt(d))."
            )
        else:
            tail = (
                f" The smallest cohort of these {s.population:,} clients that reaches "
                f"{self.target_ratio:g} is {found.cohort:,} per round "
                f"(z = {found.noise_multiplier:.4g}, ratio {found.ratio:.3g})."
            )
        return head + tail


def make_plan(s: PlanSettings, target: float = TARGET_RATIO, *, search: bool = True) -> DpPlan:
    """The plan for ``s``: z, the noise on the sum and on the mean, the noise-to-clip ratio,
    ε spent, and (``search``: it recalibrates z for every cohort it tries, which takes
    minutes for a large population) the smallest cohort whose ratio meets ``target``."""
    curve = NoiseCurve(s)
    z = curve(s.cohort)  # first: exactly the run's calibration, not a bracketed one
    spent = epsilon([round_privacy(s, z)] * s.rounds, s.delta, s.accountant)
    affordable = None
    if s.mode == "central" and s.noise_multiplier is not None and s.epsilon is not None:
        affordable = rounds_affordable(
            z,
            s.epsilon,
            s.delta,
            sampling=s.sampling,
            population=s.population,
            sample_size=s.cohort,
            accountant=s.accountant,
            max_rounds=max(s.rounds, 1),
        )
    return DpPlan(
        settings=s,
        noise_multiplier=z / s.sensitivity_factor,
        noise_std_sum=z * s.clip,
        noise_std_mean=z * s.clip / s.cohort,
        noise_to_clip=noise_to_clip(z, s.dimension, s.cohort),
        epsilon=spent,
        rounds_affordable=affordable,
        search=smallest_cohort(s, target, curve) if search else None,
        target_ratio=target,
    )
