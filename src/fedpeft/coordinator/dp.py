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
of any ``min_survivors`` clients sums to z·(sensitivity); fewer clients can never reach
the sum (SecAgg aborts below its threshold), so the guarantee holds for every completed
round, and rounds with more survivors carry more noise than accounted (conservative).
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
    _ledger: Any = field(default=None, repr=False)
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
        """Fewest clients whose noise can reach a completed secure sum."""
        return max(1, math.ceil((1.0 - self.tolerated_dropout) * cohort))

    def plan_distributed(self, *, bits: int, cohort: int, dim: int) -> DistributedPlan:
        """Integer range L and per-client discrete Gaussian σ for a secure round.

        The client's clipped update (L2 ≤ C) becomes integers of L2 ≤ L + √dim after
        stochastic rounding (each coordinate moves by < 1), the accountant's bound. With a
        target ε, σ is calibrated for the run's rounds (KLS 2021 via dp-accounting's zCDP,
        :func:`fedpeft.privacy.accountant.calibrate_local_sigma`); with a fixed z,
        σ = z·(L + √dim)/√n_min. L leaves room in the field for the cohort's values and
        8 standard deviations of the noise of all ``cohort`` clients; the two depend on
        each other, so the plan is iterated to a fixed point (three passes suffice)."""
        from fedpeft.coordinator.secure import plan_levels
        from fedpeft.privacy.accountant import calibrate_local_sigma
        from fedpeft.privacy.discrete_gaussian import integer_l2_bound

        key = (bits, cohort, dim)
        if self._plan is not None and self._plan_key == key:
            return self._plan
        n_min = self.min_survivors(cohort)
        z = self.noise_multiplier
        plan = None
        for _ in range(3):
            headroom_z = z * math.sqrt(cohort / n_min) * 1.05
            levels = plan_levels(bits, cohort, headroom_z)
            l2 = integer_l2_bound(self.clip, levels / self.clip, dim)
            if self.calibrate_for_rounds is not None and self.target_epsilon is not None:
                sigma = calibrate_local_sigma(
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
            else:
                sigma = max(0.5, z * l2 / math.sqrt(n_min))
            z_new = math.sqrt(n_min) * sigma / l2
            plan = DistributedPlan(levels, sigma, n_min, l2, dim)
            if math.isclose(z_new, z, rel_tol=1e-3):
                break
            z = z_new
        assert plan is not None
        self.noise_multiplier = math.sqrt(plan.noisy_clients) * plan.sigma / plan.l2_bound
        self._plan, self._plan_key = plan, key
        return plan

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

    def stop_reason(self, round_num: int) -> str | None:
        """Why round ``round_num`` must not run (the budget), or None."""
        budgeted = self.target_epsilon is not None and self.calibrate_for_rounds is None
        if self.distributed and budgeted and self._plan is not None:
            projected = self._compute_epsilon([*self.ledger.rounds(), self.event(0)])
            if projected > (self.target_epsilon or 0.0):
                return (
                    f"privacy budget epsilon={self.target_epsilon:g} (delta={self.delta:g}) "
                    f"is spent: {self.releases} rounds reached epsilon="
                    f"{self.epsilon_spent:.3f} and round {round_num} would reach "
                    f"{projected:.3f} — stopping"
                )
        if self.max_rounds is not None and self.releases >= self.max_rounds:
            return (
                f"privacy budget epsilon={self.target_epsilon:g} (delta={self.delta:g}) is spent: "
                f"{self.releases} rounds at noise multiplier {self.reported_multiplier:g} reached "
                f"epsilon={self.epsilon_spent:.3f}; another round would exceed it — stopping "
                f"before round {round_num}"
            )
        return None

    def record_round(self, round_num: int, *, released: bool) -> dict[str, Any]:
        """Record the round's privacy event durably (before anything is released) and
        return the metrics line's privacy fields. A failed round released nothing new, but
        its clients' noised inputs may have been partly seen: it is recorded all the same
        (over-counting is safe, under-counting is not)."""
        del released
        cohort = self.sample_size
        event = self.event(cohort)
        rounds = [*self.ledger.rounds(), event]
        eps = self._compute_epsilon(rounds)
        extra: dict[str, Any] = {"round": round_num}
        if self.adaptive is not None:
            extra["clip_after"] = self.adaptive.clip
        self.ledger.record(self._released + 1, event, delta=self.delta, epsilon=eps, extra=extra)
        self._released += 1
        self._epsilon = eps
        used_clip = self.clip
        if self.adaptive is not None:
            self.clip = self.adaptive.clip  # the next round's
        return {
            "epsilon": eps,
            "dp_delta": self.delta,
            "dp_noise_multiplier": self.reported_multiplier,
            "dp_noise_std": self.update_noise_multiplier * used_clip,
            "dp_clip": used_clip,
        }

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
        info: dict[str, Any] = {"dp_clipped_fraction": was_clipped / len(clipped)}
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
        return float(dp.noise_multiplier), None, None
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
