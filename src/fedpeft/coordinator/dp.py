"""The coordinator's side of client-level differential privacy (DP-FedAvg, McMahan et al.
2018): the noise multiplier (calibrated from a target ε or given), central noise on the
clipped sum, the budget, and the ledger that is durable before a round's adapter is
released.

The noise multiplier a user sets or reads (``dp.noise_multiplier``, ``dp_noise_multiplier``
in metrics.jsonl) is dp-accounting's: the noise std over the L2 *sensitivity* of the sum
under the run's neighbouring relation — C for Poisson sampling (add or remove one client),
2C for fixed-size sampling (replace one client: its update can flip from u to −u). The
noise actually added is therefore z·C (Poisson) or z·2C (fixed). Internally
(``DpController.noise_multiplier``, :class:`fedpeft.privacy.accountant.RoundPrivacy`) z
is std / C.

Weighting: under DP every client weighs 1. DP-FedAvg's sensitivity argument needs each
client's contribution to the sum bounded by the clip norm C; example-count weights would
let a client with many examples move the mean by more than C/k, so they are not used
(and under secure aggregation the weight coordinate carries 1 per client, i.e. the count).

Central mode: clients clip their update to L2 ≤ C (a client mod; the coordinator clips
again, so the bound holds whatever a client does), the coordinator adds N(0, (z·C)²) to
the sum and divides by the cohort size k. Distributed mode (with secure aggregation):
each client adds discrete Gaussian noise in the integer domain, sized so that the noise
of any ``n_min`` clients (:func:`fedpeft.privacy.secagg.survivor_floor`) sums to
z·(sensitivity). ``n_min`` travels in the SecAgg parameters and every client refuses to
unmask for fewer declared survivors, so every completed round carries at least the
accounted noise; rounds with more survivors carry more (conservative). The round's event
is recorded when its noise is planned, before any client is contacted
(:meth:`DpController.commit_round`), and the budget is checked there too — every round,
the first and the first after a resume included.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedpeft.errors import ConfigError
from fedpeft.privacy.clipping import clip_l2
from fedpeft.protocol.messages import Tensors

log = logging.getLogger(__name__)

LEDGER_FILE = "privacy.db"


@dataclass(frozen=True)
class DistributedPlan:
    """A secure round's distributed-DP parameters (integer domain)."""

    levels: int  # per-client integer range: the clip norm C maps to L
    sigma: float  # each client's discrete Gaussian std
    noisy_clients: int  # fewest clients whose noise reaches a completed sum
    l2_bound: float  # one client's integer vector's L2 bound (L + √dim)
    dim: int


@dataclass
class DpController:
    """Noise, budget and ledger of one DP run (built by :func:`make_dp_controller`)."""

    noise_multiplier: float
    clip: float
    delta: float
    distributed: bool
    sampling: str
    population: int
    sample_size: int
    accountant: str
    ledger_path: Path
    target_epsilon: float | None = None
    max_rounds: int | None = None  # rounds the budget affords (None: no budget stop)
    tolerated_dropout: float = 0.0
    dim: int = 0  # coordinates per update (distributed DP's integer-domain sensitivity)
    levels: int = 0
    calibrate_for_rounds: int | None = None  # distributed + target ε: σ for these rounds
    adaptive: Any = None  # fedpeft.privacy.clipping.AdaptiveClip, central DP only
    cohort_sampling: str = "seeded"  # "os_entropy" once the mechanism chose the sampler
    amplified: bool = False  # whether the events claim amplification by sampling
    _ledger: Any = field(default=None, repr=False)
    _round: int | None = field(default=None, repr=False)  # the round being run
    _committed: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)
    _plan: DistributedPlan | None = field(default=None, repr=False)
    _plan_key: tuple[int, int, int] | None = field(default=None, repr=False)
    _epsilon: float = 0.0
    _released: int = 0

    # ---- the ledger ---------------------------------------------------------------------
    @property
    def ledger(self) -> Any:
        if self._ledger is None:
            from fedpeft.privacy.ledger import PrivacyLedger

            self._ledger = PrivacyLedger(self.ledger_path)
            entries = self._ledger.entries()
            self._released = len(entries)
            if entries:
                self._epsilon = self._compute_epsilon(self._ledger.rounds())
                clip = entries[-1]["extra"].get("clip_after")
                if self.adaptive is not None and clip is not None:  # resume the clip too
                    self.adaptive.clip = float(clip)
                    self.clip = float(clip)
        return self._ledger

    def _compute_epsilon(self, rounds: list[Any]) -> float:
        from fedpeft.privacy.accountant import epsilon

        return float(epsilon(rounds, self.delta, self.accountant))

    def plan_line(self, dimension: int, rounds: int) -> str:
        """The run's DP plan as one paragraph (what ``fedpeft dp plan`` prints, without its
        cohort search): this run's z, the noise on the sum and the mean, and the ratio of
        the noise's norm on the mean update to the clip, for ``dimension`` coordinates."""
        from fedpeft.privacy.planner import PlanSettings, make_plan

        settings = PlanSettings(
            population=self.population,
            cohort=self.sample_size,
            rounds=max(1, rounds),
            clip=self.clip,
            dimension=max(1, dimension),
            epsilon=self.target_epsilon,
            delta=self.delta,
            noise_multiplier=self.reported_multiplier,
            sampling=self.sampling,
            mode="distributed" if self.distributed else "central",
            tolerated_dropout=self.tolerated_dropout if self.distributed else 0.0,
            accountant=self.accountant,
        )
        return make_plan(settings, search=False).summary()

    @property
    def epsilon_spent(self) -> float:
        _ = self.ledger
        return self._epsilon

    @property
    def releases(self) -> int:
        """Rounds recorded in the ledger (a round re-run after a crash counts again)."""
        _ = self.ledger
        return self._released

    @property
    def sensitivity_factor(self) -> float:
        """The sum's L2 sensitivity over C: 2 under replace-one (fixed-size cohorts)."""
        from fedpeft.privacy.accountant import SENSITIVITY_FACTOR

        return float(SENSITIVITY_FACTOR[self.sampling])

    @property
    def reported_multiplier(self) -> float:
        """dp-accounting's noise multiplier: noise std / the sum's L2 sensitivity."""
        return self.noise_multiplier / self.sensitivity_factor

    def min_survivors(self, cohort: int) -> int:
        """Fewest clients whose noise can reach a completed secure sum (the floor the
        SecAgg parameters carry and the clients enforce)."""
        from fedpeft.privacy.secagg import survivor_floor

        return survivor_floor(cohort, self.tolerated_dropout)

    def plan_distributed(self, *, bits: int, cohort: int, dim: int) -> DistributedPlan:
        """Integer range L and per-client discrete Gaussian σ for a secure round.

        The client's clipped update (L2 ≤ C) becomes integers of L2 ≤ L + √dim after
        stochastic rounding (each coordinate moves by < 1), the accountant's bound. With a
        target ε, σ is calibrated for the run's rounds (KLS 2021 via dp-accounting's zCDP,
        :func:`fedpeft.privacy.accountant.calibrate_local_sigma`); with a fixed z,
        σ = z·(L + √dim)/√n_min. L leaves room in the field for the cohort's values and
        the real noise on their sum, √cohort·σ (:func:`fedpeft.coordinator.secure.plan_levels`);
        σ and L depend on each other, so the plan is iterated, and only a plan whose noise
        fits (:func:`~fedpeft.coordinator.secure.noise_fits`) is taken."""
        from fedpeft.coordinator.secure import noise_fits, plan_levels
        from fedpeft.privacy.discrete_gaussian import integer_l2_bound

        key = (bits, cohort, dim)
        if self._plan is not None and self._plan_key == key:
            return self._plan
        n_min = self.min_survivors(cohort)
        z = self.noise_multiplier  # noise std on the n_min clients' sum / one client's bound
        best: DistributedPlan | None = None
        for _ in range(12):
            levels = plan_levels(bits, cohort, z * (1 + 1e-9), noisy_clients=n_min, dim=dim)
            l2 = integer_l2_bound(self.clip, levels / self.clip, dim)
            sigma = self._local_sigma(n_min, l2, dim, z)
            z_new = math.sqrt(n_min) * sigma / l2
            if noise_fits(bits, cohort, levels, sigma):
                if best is None or levels > best.levels:
                    best = DistributedPlan(levels, sigma, n_min, l2, dim)
                if math.isclose(z_new, z, rel_tol=1e-3):
                    break
                z = z_new
            else:
                z = max(z_new, z * 1.02)
        if best is None:
            raise ConfigError(
                "secagg.bits",
                f"{bits} bits cannot hold a cohort of {cohort} with its DP noise "
                f"(sigma {sigma:.3g} per client); raise secagg.bits",
            )
        self.noise_multiplier = math.sqrt(best.noisy_clients) * best.sigma / best.l2_bound
        self._plan, self._plan_key = best, key
        return best

    def _local_sigma(self, n_min: int, l2: float, dim: int, z: float) -> float:
        """Each client's σ for an integer bound ``l2``: calibrated to the target, or z's."""
        from fedpeft.privacy.accountant import calibrate_local_sigma

        if self.calibrate_for_rounds is not None and self.target_epsilon is not None:
            return float(
                calibrate_local_sigma(
                    self.target_epsilon,
                    self.delta,
                    self.calibrate_for_rounds,
                    sampling=self.sampling,
                    population=self.population,
                    sample_size=self.sample_size,
                    noisy_clients=n_min,
                    l2_bound=l2,
                    dimension=dim,
                )
            )
        return max(0.5, z * l2 / math.sqrt(n_min))

    def event(self, cohort: int) -> Any:
        from fedpeft.privacy.accountant import RoundPrivacy

        if not self.distributed:
            return RoundPrivacy(
                noise_multiplier=self.noise_multiplier,
                sampling=self.sampling,
                population=self.population,
                sample_size=self.sample_size,
            )
        return distributed_round_privacy(self, cohort)

    def begin_round(self, round_num: int) -> None:
        """The round about to run (its event is recorded as this round)."""
        self._round = round_num

    def _budget_reason(self, round_num: int, event: Any) -> str | None:
        """Why ``event`` must not be spent as round ``round_num`` (the target ε), or None."""
        if self.target_epsilon is None:
            return None
        projected = self._compute_epsilon([*self.ledger.rounds(), event])
        if projected <= self.target_epsilon * (1 + 1e-9):
            return None
        return (
            f"privacy budget epsilon={self.target_epsilon:g} (delta={self.delta:g}) is spent: "
            f"{self.releases} rounds recorded reach epsilon={self.epsilon_spent:.3f} and "
            f"round {round_num} would reach {projected:.3f} — stopping before round {round_num}"
        )

    def stop_reason(self, round_num: int) -> str | None:
        """Why round ``round_num`` must not run (the budget), or None. A distributed
        round's event is known only once its noise is planned: :meth:`commit_round`
        checks it then, before any client is contacted."""
        if self.max_rounds is not None and self.releases >= self.max_rounds:
            return (
                f"privacy budget epsilon={self.target_epsilon:g} (delta={self.delta:g}) is spent: "
                f"{self.releases} rounds at noise multiplier {self.reported_multiplier:g} reached "
                f"epsilon={self.epsilon_spent:.3f}; another round would exceed it — stopping "
                f"before round {round_num}"
            )
        if self.distributed and self._plan is None:
            return None
        return self._budget_reason(round_num, self.event(self.sample_size))

    def commit_round(self) -> dict[str, Any]:
        """Record the round begun last (:meth:`begin_round`) durably, after checking the
        budget (:class:`~fedpeft.coordinator.privacy.BudgetSpent`); distributed DP calls
        this when the round's noise is planned, before any client input exists, so no
        sum can be unmasked unrecorded. Returns the metrics line's privacy fields."""
        from fedpeft.coordinator.privacy import BudgetSpent

        round_num = self._round if self._round is not None else self.releases + 1
        if round_num in self._committed:
            return self._committed[round_num]
        event = self.event(self.sample_size)
        reason = self._budget_reason(round_num, event)
        if reason is not None:
            raise BudgetSpent(reason)
        eps = self._compute_epsilon([*self.ledger.rounds(), event])
        extra: dict[str, Any] = {"round": round_num}
        if self.adaptive is not None:
            extra["clip_after"] = self.adaptive.clip
        self.ledger.record(self._released + 1, event, delta=self.delta, epsilon=eps, extra=extra)
        self._released += 1
        self._epsilon = eps
        used_clip = self.clip
        if self.adaptive is not None:
            self.clip = self.adaptive.clip  # the next round's
        fields = {
            "epsilon": eps,
            "dp_delta": self.delta,
            "dp_noise_multiplier": self.reported_multiplier,
            "dp_noise_std": self.update_noise_multiplier * used_clip,
            "dp_clip": used_clip,
            "dp_cohort_sampling": self.cohort_sampling,
            "dp_amplification": self.amplified,
        }
        self._committed = {round_num: fields}
        return fields

    def record_round(self, round_num: int, *, released: bool) -> dict[str, Any]:
        """The round's privacy fields, its event recorded durably (before anything is
        released) unless :meth:`commit_round` already did. A failed round released
        nothing new, but its clients' noised inputs may have been partly seen: it is
        recorded all the same (over-counting is safe, under-counting is not)."""
        del released
        if round_num in self._committed:
            return self._committed.pop(round_num)
        self._round = round_num
        return self._committed.pop(round_num, None) or self.commit_round()

    # ---- central noise ------------------------------------------------------------------
    def noisy_mean(self, deltas: list[Tensors], round_num: int) -> tuple[Tensors, dict[str, Any]]:
        """Clip each update to C, sum, add N(0, (z·C)²) per coordinate, divide by the
        cohort size (uniform weights). The noise comes from the OS's entropy, not the run
        seed: a seeded noise draw would be reproducible by anyone who knows the seed."""
        del round_num
        clipped = [(c, factor < 1.0) for c, _, factor in (clip_l2(d, self.clip) for d in deltas)]
        rng = np.random.default_rng()
        k = float(self.sample_size)
        mean: Tensors = {}
        for name in deltas[0]:
            acc = np.zeros(deltas[0][name].shape, np.float64)
            for c, _ in clipped:
                acc += c[name]
            acc += rng.normal(0.0, self.update_noise_multiplier * self.clip, size=acc.shape)
            mean[name] = (acc / k).astype(np.float32)
        was_clipped = sum(was for _, was in clipped)
        # the exact clipped fraction is not released (it is neither noised nor accounted);
        # adaptive clipping releases its noised, accounted copy
        info: dict[str, Any] = {}
        if self.adaptive is not None:  # the noised count moves next round's clip
            self.adaptive.update(float(was_clipped), len(clipped), rng, denominator=k)
            info["dp_unclipped_fraction_noised"] = self.adaptive.last_unclipped_fraction
        return mean, info

    @property
    def update_noise_multiplier(self) -> float:
        """Noise std / C on the update sum: all of z, or with adaptive clipping what the
        noised clipped-count leaves of it (Andrew et al. 2021; both releases together cost
        the accounted z)."""
        if self.adaptive is None:
            return self.noise_multiplier
        from fedpeft.privacy.clipping import split_noise_multiplier

        factor = self.sensitivity_factor
        # the count's sensitivity is 1/2 (Poisson) or 1 (fixed, replace one): in
        # dp-accounting's terms its noise multiplier is count_std / (factor / 2)
        user = split_noise_multiplier(
            self.reported_multiplier, self.adaptive.count_noise_std / factor
        )
        return user * factor

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None


def distributed_round_privacy(ctl: DpController, cohort: int) -> Any:
    """The accountant's view of a distributed discrete-Gaussian round."""
    from fedpeft.privacy.accountant import RoundPrivacy

    plan = ctl._plan
    if plan is None:
        raise RuntimeError("a distributed DP round is recorded before it was planned")
    del cohort
    return RoundPrivacy.distributed(
        local_sigma=plan.sigma,
        noisy_clients=plan.noisy_clients,
        l2_bound=plan.l2_bound,
        dimension=plan.dim,
        sampling=ctl.sampling,
        population=ctl.population,
        sample_size=ctl.sample_size,
    )


def make_dp_controller(
    cfg: Any, run_dir: Path, *, distributed: bool, population: int
) -> DpController:
    """Build the controller from a JobConfig: calibrate z from the target, or check the
    given z against the budget; refuse (ConfigError, with the numbers) a target that no
    trainable noise can meet. ``population``: the clients each cohort is drawn from (the
    accountant's sampling amplification rests on it)."""
    dp, fed = cfg.dp, cfg.federation
    if dp.target_delta >= 1.0 / population:
        raise ConfigError(
            "dp.delta",
            f"{dp.target_delta} must be < 1/clients = {1.0 / population:.3g} "
            "(a larger delta could release one client's data outright)",
        )
    common = {
        "sampling": fed.sampling,
        "population": population,
        "sample_size": fed.clients_per_round,
        "accountant": dp.accountant,
    }
    z, max_rounds, calibrate_for = _noise_plan(cfg, distributed, common)
    return DpController(
        adaptive=_adaptive_clip(cfg, z) if dp.adaptive_clip else None,
        noise_multiplier=z,
        clip=dp.clip,
        delta=dp.target_delta,
        distributed=distributed,
        ledger_path=Path(run_dir) / LEDGER_FILE,
        target_epsilon=dp.epsilon,
        max_rounds=max_rounds,
        tolerated_dropout=cfg.secagg.tolerated_dropout if distributed else 0.0,
        calibrate_for_rounds=calibrate_for,
        **common,
    )


def _sensitivity_factor(sampling: str) -> float:
    """The sum's L2 sensitivity over C: 2 under replace-one (fixed-size cohorts)."""
    return 2.0 if sampling == "fixed" else 1.0


def _noise_plan(
    cfg: Any, distributed: bool, common: dict[str, Any]
) -> tuple[float, int | None, int | None]:
    """(z as noise std / C, the rounds a fixed z affords under a target or None, the rounds
    a distributed run calibrates σ for or None)."""
    from fedpeft.privacy.accountant import calibrate_noise_multiplier, rounds_affordable

    dp, fed = cfg.dp, cfg.federation
    if distributed:
        # the discrete Gaussian's parameters depend on the adapter's size, known at the
        # first round (DpController.plan_distributed); a fixed z with a budget is checked
        # round by round against the accountant (stop_reason)
        if dp.noise_multiplier is None:
            return 1.0, None, fed.rounds
        # the user's z is dp-accounting's (std over the sum's sensitivity, 2C under
        # fixed-size cohorts), as in central mode and in `fedpeft dp plan`
        return float(dp.noise_multiplier) * _sensitivity_factor(fed.sampling), None, None
    if dp.noise_multiplier is None:
        z = calibrate_noise_multiplier(
            dp.epsilon, dp.target_delta, fed.rounds, max_noise=100.0, **common
        )
        return z, None, None
    z = float(dp.noise_multiplier) * _sensitivity_factor(fed.sampling)
    if dp.epsilon is None:
        return z, None, None
    max_rounds = rounds_affordable(z, dp.epsilon, dp.target_delta, **common)
    if max_rounds < 1:
        raise ConfigError(
            "dp.epsilon",
            f"noise multiplier {dp.noise_multiplier:g} spends more than "
            f"epsilon={dp.epsilon:g} in one round; raise dp.noise_multiplier or the target",
        )
    return z, max_rounds, None


def _adaptive_clip(cfg: Any, z: float) -> Any:
    """Andrew et al.'s adaptive clip (central DP), refused early when its count noise
    would leave the update sum no noise budget."""
    from fedpeft.privacy.clipping import AdaptiveClip, split_noise_multiplier

    dp, fed = cfg.dp, cfg.federation
    adaptive = AdaptiveClip(
        dp.clip,
        dp.target_quantile,
        dp.clip_lr,
        dp.count_noise_std or None,
        expected_clients=float(fed.clients_per_round),
    )
    factor = _sensitivity_factor(fed.sampling)
    split_noise_multiplier(z / factor, adaptive.count_noise_std / factor)
    return adaptive
