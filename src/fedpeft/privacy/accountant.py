"""Privacy accounting for client-level DP-FedAvg, on ``dp-accounting`` 0.6.0.

Every number this module reports comes from dp-accounting's own accountants; nothing here
re-derives an RDP curve or a privacy-loss distribution. What this module decides is *which
event* a round is, and that decision is where privacy bugs hide, so it is spelled out:

* ``sampling="poisson"`` — every registered client joins a round independently with
  probability q = k/n; the mean divides by the public k (McMahan et al. 2018). Neighbouring
  datasets add or remove one client, whose clipped update moves the sum by at most C, so
  the round is ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` under ``ADD_OR_REMOVE_ONE``
  (RDP or PLD accountant).
* ``sampling="fixed"`` — exactly k of n clients, without replacement. n is public, so the
  neighbouring relation is ``REPLACE_ONE``: one client's data is replaced by another's and
  the sum moves by up to ``2C`` (two updates of norm ≤ C, pointing opposite ways).
  dp-accounting's RDP bound for ``SampledWithoutReplacementDpEvent`` (Wang, Balle,
  Kasiviswanathan 2019, Thm. 27) takes the noise over the *replace-one sensitivity*, so the
  event carries ``GaussianDpEvent(z / 2)``. Passing z itself would under-count: at k = n
  (no sampling) the RDP accountant would report ε = 4.73 for z = 1 at δ = 1e-5, below the
  PLD accountant's tight REPLACE_ONE value of 10.0 for the same Gaussian — impossible for a
  valid bound (a unit test pins this). This is one of the pitfalls of Lebeda, Regehr,
  Kamath, Steinke 2024 ("Avoiding pitfalls for privacy accounting of subsampled
  mechanisms under composition"). dp-accounting 0.6.0 has no PLD for sampling without
  replacement, so ``fixed`` needs the RDP accountant.
* ``mechanism="discrete_gaussian"`` (distributed DP under secure aggregation) — each of at
  least ``noisy_clients`` clients adds discrete Gaussian noise N_Z(0, σ²) per coordinate in
  the integer domain; the server sees the sum. Kairouz, Liu, Steinke 2021 (arXiv
  2102.06387, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
  Secure Aggregation"), Theorem 1 (privacy of the sum of n discrete Gaussians, σ ≥ 1/2) in
  its RDP form, Proposition 14 / Eq. (17): for every order α > 1 the sum satisfies
  (α, α/2 · ε²)-RDP with ε² the smaller of ``Δ2²/(nσ²) + 2τΔ1/(√n σ) + τ²d`` and
  ``(Δ2/(√n σ) + τ√d)²``, where ``τ = 10 Σ_{k=1}^{n-1} exp(-2π²σ² k/(k+1))``. Both are
  ρ-zCDP bounds with ρ = ε²/2, i.e. ``ZCDpEvent(rho)``. (The paper's third form,
  α/2 · Δ2²/(nσ²) + τd, is an (ξ, ρ) bound; we keep ξ = 0.) The formula here was checked
  against the authors' reference implementation (google-research/federated,
  ``distributed_dp/accounting_utils.py``, ``compute_rdp_dgaussian``, which cites the same
  Proposition 14); the PDF itself was not reachable from the build machine.
  dp-accounting cannot amplify a ``ZCDpEvent`` by sampling (neither accountant accepts a
  sampled ZCDp event) and hand-rolled amplification is out of bounds, so the discrete
  round is accounted *without* amplification by sampling — sound (the sampled cohorts of
  neighbouring datasets differ in at most one client) and conservative. The sensitivities
  follow the relation: Δ = the client bound (poisson) or twice it (fixed, replace-one).

The RDP accountant's ``_compute_log_a_frac failed to converge`` warnings (hundreds of lines
at z ≤ 1; the order is then dropped from the minimum, which can only raise ε) are filtered
out of the ``absl`` logger while this module calls the accountant, and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp

from fedpeft.errors import ConfigError

ACCOUNTANTS = ("rdp", "pld")
SAMPLINGS = ("fixed", "poisson")
MECHANISMS = ("gaussian", "discrete_gaussian")

_NR = dp_accounting.NeighboringRelation
#: Neighbouring relation of each sampling scheme (see the module docstring).
RELATIONS = {"poisson": _NR.ADD_OR_REMOVE_ONE, "fixed": _NR.REPLACE_ONE}
#: How far one client can move the released sum, in units of the per-client norm bound.
SENSITIVITY_FACTOR = {"poisson": 1.0, "fixed": 2.0}
#: Absolute tolerance on a calibrated noise multiplier (the result never overshoots ε).
CALIBRATION_TOL = 1e-3

_NOISY_WARNING = "_compute_log_a_frac failed to converge"


class _DropConvergenceWarnings(logging.Filter):
    """Drops the RDP accountant's convergence warnings and counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(_NOISY_WARNING):
            self.dropped += 1
            return False
        return True


@contextlib.contextmanager
def quiet_accountant() -> Iterator[_DropConvergenceWarnings]:
    """Silence dp-accounting's convergence warnings inside the block (scoped: the filter
    is removed on exit, other absl messages pass). Yields the filter; ``.dropped`` counts."""
    logger = logging.getLogger("absl")
    filt = _DropConvergenceWarnings()
    logger.addFilter(filt)
    try:
        yield filt
    finally:
        logger.removeFilter(filt)
        if filt.dropped:
            logging.getLogger(__name__).debug(
                "dropped %d dp-accounting convergence warnings", filt.dropped
            )


def _field(name: str) -> str:
    return f"dp.{name}"


@dataclass(frozen=True)
class RoundPrivacy:
    """One round's release, as the accountant must see it.

    ``noise_multiplier`` z is the std of the noise on the *sum* divided by the per-client
    clip norm C (for the discrete Gaussian: ``√noisy_clients · local_sigma / l2_bound``,
    computed by :meth:`distributed`). ``sampling``: ``"fixed"`` (exactly ``sample_size`` of
    ``population``, without replacement) or ``"poisson"`` (q = sample_size / population).

    Distributed discrete Gaussian fields (``mechanism="discrete_gaussian"``), all in the
    integer domain after scaling and rounding:

    * ``local_sigma``: σ of each client's N_Z(0, σ²) noise per coordinate (≥ 1/2, as
      Kairouz–Liu–Steinke 2021 Theorem 1 requires);
    * ``noisy_clients``: n, the fewest clients whose noise reaches the sum (SecAgg's
      ``min_survivors``: the round aborts below it);
    * ``l2_bound``: bound on one client's integer vector's L2 norm (after rounding — the
      client must enforce it, e.g. by conditional rounding);
    * ``l1_bound``: bound on its L1 norm; 0 means ``min(√d · l2_bound, l2_bound²)`` (the
      latter holds for integer vectors);
    * ``dimension``: d, coordinates per update.
    """

    noise_multiplier: float
    sampling: str
    population: int
    sample_size: int
    mechanism: str = "gaussian"
    local_sigma: float = 0.0
    noisy_clients: int = 0
    l2_bound: float = 0.0
    l1_bound: float = 0.0
    dimension: int = 0

    def __post_init__(self) -> None:
        z = self.noise_multiplier
        if not (isinstance(z, (int, float)) and math.isfinite(z) and z > 0):
            raise ConfigError(_field("noise_multiplier"), f"must be > 0, got {z!r}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(
                "federation.sampling", f"must be one of {SAMPLINGS}, got {self.sampling!r}"
            )
        if self.mechanism not in MECHANISMS:
            raise ConfigError(
                _field("mechanism"), f"must be one of {MECHANISMS}, got {self.mechanism!r}"
            )
        if not (isinstance(self.population, int) and self.population >= 1):
            raise ConfigError("federation.clients", f"must be >= 1, got {self.population!r}")
        if not (isinstance(self.sample_size, int) and 1 <= self.sample_size <= self.population):
            raise ConfigError(
                "federation.clients_per_round",
                f"must be in [1, {self.population}], got {self.sample_size!r}",
            )
        if self.mechanism == "discrete_gaussian":
            self._check_discrete()

    def _check_discrete(self) -> None:
        if not (math.isfinite(self.local_sigma) and self.local_sigma >= 0.5):
            raise ConfigError(
                _field("local_sigma"),
                f"the discrete Gaussian bound needs sigma >= 1/2, got {self.local_sigma!r}",
            )
        if self.noisy_clients < 1:
            raise ConfigError(_field("noisy_clients"), f"must be >= 1, got {self.noisy_clients!r}")
        if not (math.isfinite(self.l2_bound) and self.l2_bound > 0):
            raise ConfigError(_field("l2_bound"), f"must be > 0, got {self.l2_bound!r}")
        if not (math.isfinite(self.l1_bound) and self.l1_bound >= 0):
            raise ConfigError(_field("l1_bound"), f"must be >= 0, got {self.l1_bound!r}")
        if self.dimension < 1:
            raise ConfigError(_field("dimension"), f"must be >= 1, got {self.dimension!r}")
        expected = math.sqrt(self.noisy_clients) * self.local_sigma / self.l2_bound
        if not math.isclose(self.noise_multiplier, expected, rel_tol=1e-9):
            raise ConfigError(
                _field("noise_multiplier"),
                f"{self.noise_multiplier!r} disagrees with sqrt(noisy_clients) * local_sigma "
                f"/ l2_bound = {expected!r}; build it with RoundPrivacy.distributed(...)",
            )

    @classmethod
    def distributed(
        cls,
        *,
        local_sigma: float,
        noisy_clients: int,
        l2_bound: float,
        dimension: int,
        sampling: str,
        population: int,
        sample_size: int,
        l1_bound: float = 0.0,
    ) -> RoundPrivacy:
        """A distributed discrete Gaussian round; z is derived from the integer-domain
        parameters (``√noisy_clients · local_sigma / l2_bound``)."""
        if not (noisy_clients >= 1 and l2_bound > 0):
            raise ConfigError(
                _field("noisy_clients"),
                f"need noisy_clients >= 1 and l2_bound > 0, got {noisy_clients}, {l2_bound}",
            )
        return cls(
            noise_multiplier=math.sqrt(noisy_clients) * local_sigma / l2_bound,
            sampling=sampling,
            population=population,
            sample_size=sample_size,
            mechanism="discrete_gaussian",
            local_sigma=float(local_sigma),
            noisy_clients=int(noisy_clients),
            l2_bound=float(l2_bound),
            l1_bound=float(l1_bound),
            dimension=int(dimension),
        )

    @property
    def sampling_probability(self) -> float:
        return self.sample_size / self.population

    @property
    def relation(self) -> dp_accounting.NeighboringRelation:
        return RELATIONS[self.sampling]

    def zcdp_rho(self) -> float:
        """ρ of the sum of discrete Gaussians (Kairouz–Liu–Steinke 2021, Theorem 1 /
        Proposition 14, Eq. 17; see the module docstring), with the sensitivities of this
        round's neighbouring relation."""
        if self.mechanism != "discrete_gaussian":
            raise ValueError("zcdp_rho is defined for the discrete Gaussian only")
        factor = SENSITIVITY_FACTOR[self.sampling]
        n, sigma, d = self.noisy_clients, self.local_sigma, self.dimension
        l1 = self.l1_bound or min(math.sqrt(d) * self.l2_bound, self.l2_bound**2)
        delta2, delta1 = factor * self.l2_bound, factor * l1
        tau = 10.0 * sum(math.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, n))
        l2_scale = delta2 / (math.sqrt(n) * sigma)
        l1_scale = delta1 / (math.sqrt(n) * sigma)
        eps_sq = min(
            l2_scale**2 + 2.0 * l1_scale * tau + tau**2 * d,
            (l2_scale + math.sqrt(d) * tau) ** 2,
        )
        return eps_sq / 2.0

    def event(self) -> dp_accounting.DpEvent:
        """The dp-accounting event the accountant composes for this round."""
        if self.mechanism == "discrete_gaussian":
            # No amplification by sampling: dp-accounting has none for zCDP (module doc).
            return dp_accounting.ZCDpEvent(self.zcdp_rho())
        if self.sampling == "poisson":
            return dp_accounting.PoissonSampledDpEvent(
                self.sampling_probability, dp_accounting.GaussianDpEvent(self.noise_multiplier)
            )
        return dp_accounting.SampledWithoutReplacementDpEvent(
            self.population,
            self.sample_size,
            dp_accounting.GaussianDpEvent(self.noise_multiplier / SENSITIVITY_FACTOR["fixed"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundPrivacy:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(_field("ledger"), f"unknown round privacy fields {sorted(unknown)}")
        return cls(**d)


def _check_delta(delta: float, population: int | None = None) -> None:
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and 0 < delta < 1):
        raise ConfigError(_field("delta"), f"must be in (0, 1), got {delta!r}")
    if population is not None and delta >= 1.0 / population:
        raise ConfigError(
            _field("delta"),
            f"must be < 1/clients = {1.0 / population:.3g} (got {delta:g}): a delta that "
            "large allows releasing one client's data outright",
        )


def _check_epsilon(target: float) -> None:
    if not (isinstance(target, (int, float)) and math.isfinite(target) and target > 0):
        raise ConfigError(_field("epsilon"), f"must be > 0, got {target!r}")


def _make_accountant(accountant: str, relation: Any) -> dp_accounting.PrivacyAccountant:
    if accountant == "rdp":
        return rdp.RdpAccountant(neighboring_relation=relation)
    if accountant == "pld":
        return pld.PLDAccountant(neighboring_relation=relation)
    raise ConfigError(_field("accountant"), f"must be one of {ACCOUNTANTS}, got {accountant!r}")


def _check_supported(rounds: Sequence[RoundPrivacy], accountant: str) -> None:
    if accountant != "pld":
        return
    for r in rounds:
        if r.mechanism == "discrete_gaussian":
            raise ConfigError(
                _field("accountant"),
                "pld cannot account the distributed discrete Gaussian (a zCDP bound); "
                "use accountant = 'rdp'",
            )
        if r.sampling == "fixed":
            raise ConfigError(
                _field("accountant"),
                "dp-accounting 0.6.0 has no PLD for fixed-size sampling without replacement; "
                "use accountant = 'rdp' or federation.sampling = 'poisson'",
            )


def composed_event(rounds: Sequence[RoundPrivacy]) -> dp_accounting.DpEvent:
    """All rounds as one event; identical rounds are self-composed (order is irrelevant)."""
    counts = Counter(rounds)
    parts = [
        dp_accounting.SelfComposedDpEvent(r.event(), c) if c > 1 else r.event()
        for r, c in counts.items()
    ]
    return parts[0] if len(parts) == 1 else dp_accounting.ComposedDpEvent(parts)


def epsilon(rounds: Sequence[RoundPrivacy], delta: float, accountant: str = "rdp") -> float:
    """ε spent at ``delta`` by ``rounds`` (dp-accounting's answer; 0.0 for no rounds)."""
    _check_delta(delta)
    if accountant not in ACCOUNTANTS:
        raise ConfigError(_field("accountant"), f"must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not rounds:
        return 0.0
    relations = {r.relation for r in rounds}
    if len(relations) > 1:
        raise ConfigError(
            "federation.sampling", "rounds mix fixed and poisson sampling; one run, one relation"
        )
    _check_supported(rounds, accountant)
    acc = _make_accountant(accountant, relations.pop())
    with quiet_accountant():
        acc.compose(composed_event(rounds))
        return float(acc.get_epsilon(delta))


def _describe(sampling: str, population: int, sample_size: int, delta: float) -> str:
    if sampling == "fixed":
        how = f"{sample_size} of {population}"
    else:
        how = f"Poisson q = {sample_size}/{population}"
    return f"sampling {sampling} ({how}), delta = {delta:g}"


def calibrate(
    make_round: Callable[[float], RoundPrivacy],
    target_epsilon: float,
    delta: float,
    rounds: int,
    *,
    accountant: str = "rdp",
    min_noise: float = 0.05,
    max_noise: float = 100.0,
    what: str = "noise multiplier",
) -> float:
    """The smallest noise multiplier z in [min_noise, max_noise] (to
    :data:`CALIBRATION_TOL`) for which ``rounds`` rounds of ``make_round(z)`` spend at
    most ``target_epsilon``; never one that overshoots (dp-accounting's
    ``calibrate_dp_mechanism`` guarantees a non-positive gap). Raises ConfigError
    ``dp.epsilon`` with the numbers when even ``max_noise`` spends more."""
    _check_epsilon(target_epsilon)
    _check_delta(delta)
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ConfigError("federation.rounds", f"must be >= 1, got {rounds!r}")
    job = _Calibration(make_round, target_epsilon, delta, rounds, accountant)
    probe = make_round(max_noise)
    _check_supported([probe], accountant)
    job.check_reachable(probe, max_noise, what)
    if accountant == "pld":
        lo, hi = job.pld_bracket(min_noise, max_noise, what)
    else:
        lo, hi = min_noise, max_noise
    if job.fits(lo):
        return lo
    return job.search(probe.relation, lo, hi)


class _Calibration:
    """One calibration problem: ``rounds`` rounds of ``make_round(z)`` against
    ``target_epsilon`` at ``delta``, with ε at each z cached (every value is an accountant
    run, seconds for a PLD at small z)."""

    def __init__(
        self,
        make_round: Callable[[float], RoundPrivacy],
        target_epsilon: float,
        delta: float,
        rounds: int,
        accountant: str,
    ) -> None:
        self.make_round = make_round
        self.target_epsilon = target_epsilon
        self.delta = delta
        self.rounds = rounds
        self.accountant = accountant
        self._spent: dict[float, float] = {}

    def epsilon_at(self, z: float) -> float:
        if z not in self._spent:
            rounds = [self.make_round(z)] * self.rounds
            self._spent[z] = epsilon(rounds, self.delta, self.accountant)
        return self._spent[z]

    def fits(self, z: float) -> bool:
        return self.epsilon_at(z) <= self.target_epsilon

    def check_reachable(self, probe: RoundPrivacy, max_noise: float, what: str) -> None:
        """Refuse, with the numbers, a target that even ``max_noise`` overshoots: no z in
        range can meet it, and the user must change rounds, ε or the cohort instead."""
        worst = self.epsilon_at(max_noise)
        if worst > self.target_epsilon:
            setting = _describe(probe.sampling, probe.population, probe.sample_size, self.delta)
            raise ConfigError(
                _field("epsilon"),
                f"epsilon = {self.target_epsilon:g} over {self.rounds} rounds is out of reach: "
                f"even {what} {max_noise:g} spends epsilon = {worst:.3g} "
                f"({setting}, {self.accountant} accountant); allow fewer rounds, a larger "
                "epsilon or more clients",
            )

    def pld_bracket(self, min_noise: float, max_noise: float, what: str) -> tuple[float, float]:
        """A bracket ``(lo, hi)`` for the PLD search. A PLD at small z is slow to build
        (seconds to minutes), so the search starts from the RDP answer, an upper bound for
        the tighter PLD one, and halves down until ``lo`` overshoots or hits ``min_noise``."""
        try:
            hi = calibrate(
                self.make_round,
                self.target_epsilon,
                self.delta,
                self.rounds,
                accountant="rdp",
                min_noise=min_noise,
                max_noise=max_noise,
                what=what,
            )
        except ConfigError:  # out of RDP's reach but within the tighter PLD's
            hi = max_noise
        lo = max(min_noise, hi / 2)
        while lo > min_noise and self.fits(lo):
            hi, lo = lo, max(min_noise, lo / 2)
        return lo, hi

    def search(self, relation: dp_accounting.NeighboringRelation, lo: float, hi: float) -> float:
        """dp-accounting's ``calibrate_dp_mechanism`` over ``[lo, hi]``; the z it returns is
        checked once more, so an overshooting z is never handed back."""

        def make_event(z: float) -> dp_accounting.DpEvent:
            return composed_event([self.make_round(z)] * self.rounds)

        with quiet_accountant():
            z = dp_accounting.calibrate_dp_mechanism(
                lambda: _make_accountant(self.accountant, relation),
                make_event,
                self.target_epsilon,
                self.delta,
                dp_accounting.ExplicitBracketInterval(lo, hi),
                tol=CALIBRATION_TOL,
            )
        z = float(z)
        if not self.fits(z):  # defensive: never hand back an overshooting z
            raise RuntimeError(f"calibration returned z={z} over budget")  # pragma: no cover
        return z


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    rounds: int,
    *,
    sampling: str,
    population: int,
    sample_size: int,
    accountant: str = "rdp",
    max_noise: float = 100.0,
) -> float:
    """Smallest Gaussian noise multiplier z (noise std on the sum / C) with which
    ``rounds`` rounds spend at most ``target_epsilon`` at ``delta``; never overshoots.
    Raises ConfigError (``dp.epsilon``, with the numbers) when even ``max_noise`` cannot."""
    _check_delta(delta, population)

    def make_round(z: float) -> RoundPrivacy:
        return RoundPrivacy(z, sampling, population, sample_size)

    return calibrate(
        make_round, target_epsilon, delta, rounds, accountant=accountant, max_noise=max_noise
    )


def calibrate_local_sigma(
    target_epsilon: float,
    delta: float,
    rounds: int,
    *,
    sampling: str,
    population: int,
    sample_size: int,
    noisy_clients: int,
    l2_bound: float,
    dimension: int,
    l1_bound: float = 0.0,
    max_noise: float = 100.0,
) -> float:
    """Per-client discrete Gaussian σ (integer domain) for distributed DP: the smallest σ
    such that ``rounds`` rounds, with the noise of ``noisy_clients`` clients in each sum,
    spend at most ``target_epsilon`` (RDP accountant; never overshoots). ``max_noise``
    bounds the *total* noise multiplier ``√n · σ / l2_bound`` as for central DP."""
    _check_delta(delta, population)
    scale = l2_bound / math.sqrt(noisy_clients)
    min_noise = max(0.05, 0.5 / scale)  # σ ≥ 1/2 (KLS Theorem 1)
    if min_noise >= max_noise:
        raise ConfigError(
            _field("l2_bound"),
            f"l2_bound {l2_bound:g} is too small for {noisy_clients} clients: sigma >= 1/2 "
            f"already means noise multiplier {min_noise:g} > {max_noise:g}",
        )

    def make_round(z: float) -> RoundPrivacy:
        return RoundPrivacy.distributed(
            local_sigma=z * scale,
            noisy_clients=noisy_clients,
            l2_bound=l2_bound,
            l1_bound=l1_bound,
            dimension=dimension,
            sampling=sampling,
            population=population,
            sample_size=sample_size,
        )

    z = calibrate(
        make_round,
        target_epsilon,
        delta,
        rounds,
        accountant="rdp",
        min_noise=min_noise,
        max_noise=max_noise,
        what="total noise multiplier",
    )
    return z * scale


def rounds_affordable(
    noise_multiplier: float,
    target_epsilon: float,
    delta: float,
    *,
    sampling: str,
    population: int,
    sample_size: int,
    accountant: str = "rdp",
    max_rounds: int = 100000,
) -> int:
    """The most rounds (≤ ``max_rounds``) at ``noise_multiplier`` whose ε stays at or
    below ``target_epsilon``: ``epsilon([r] * n) <= target`` exactly for n ≤ the answer.
    0 when a single round already spends more (the caller refuses the run)."""
    _check_epsilon(target_epsilon)
    _check_delta(delta, population)
    one = RoundPrivacy(noise_multiplier, sampling, population, sample_size)

    def fits(n: int) -> bool:
        return epsilon([one] * n, delta, accountant) <= target_epsilon

    if not fits(1):
        return 0
    lo, hi = 1, 2  # fits(lo); find hi with not fits(hi), doubling
    while hi <= max_rounds and fits(hi):
        lo, hi = hi, hi * 2
    if hi > max_rounds:
        if fits(max_rounds):
            return max_rounds
        hi = max_rounds
    while hi - lo > 1:  # invariant: fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
