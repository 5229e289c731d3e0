"""Privacy mechanisms in a round, behind one interface (as Flower wraps a strategy for DP).

The engine calls a :class:`PrivacyMechanism` at fixed points and never branches on which
one it holds:

* :meth:`~PrivacyMechanism.cohort_sampler` once, before the first round — how cohorts
  must be drawn for the accounting to hold (OS entropy when it claims amplification by
  sampling);
* :meth:`~PrivacyMechanism.stop_reason` before a round (the budget);
* :meth:`~PrivacyMechanism.begin_round` when the round's cohort is drawn;
* :meth:`~PrivacyMechanism.configure` — what it adds to each client's task (the clip,
  and the accountant's parameters a client's privacy policy checks: mechanism, noise
  multiplier, sampling, population, cohort, rounds, δ, accountant);
* :meth:`~PrivacyMechanism.secure_plan` — under secure aggregation, once per round before
  any client is contacted: how clients encode (uniform weights, the clip range,
  distributed noise). A mechanism whose noise travels inside the clients' inputs records
  the round's event here, before the unmask stage can release the sum, and raises
  :class:`BudgetSpent` instead when the budget cannot afford the round;
* :meth:`~PrivacyMechanism.aggregate` — how the collected updates (or their secure sum)
  become the strategy's step;
* :meth:`~PrivacyMechanism.record_round` — the privacy event, durable before the round's
  adapter is released.

:class:`NoPrivacy` is the default; :class:`CentralDp` noises the clipped sum here
(needs individual updates); :class:`DistributedDp` has clients add discrete Gaussian
noise inside the secure sum. Secure aggregation itself is a
:class:`~fedpeft.coordinator.collect.Collection` (what the coordinator gets to see), and
each mechanism checks that it can work with the collection it is given.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fedpeft.aggregation import AggregateStats, Strategy
from fedpeft.coordinator.collect import Collected, EncodingPlan
from fedpeft.coordinator.sampling import from_entropy
from fedpeft.errors import ConfigError, FedPeftError
from fedpeft.protocol.messages import TaskSettings, Tensors

if TYPE_CHECKING:
    from fedpeft.coordinator.dp import DpController

log = logging.getLogger(__name__)

#: the clear statistics of each client's update norm that a client's clip mod reports:
#: never released under DP (they are neither noised nor accounted)
NORM_METRICS = ("update_norm", "clip_factor", "dp_clipped")


class BudgetSpent(FedPeftError):
    """The privacy budget cannot afford the round about to start (raised before any
    client input is released; the engine stops the run with this reason)."""


class PrivacyMechanism:
    """No privacy mechanism: the hooks' neutral answers (subclasses override)."""

    name = "none"
    #: whether the accounting claims amplification by sampling (cohorts must then be
    #: unpredictable: drawn from OS entropy)
    amplified = False

    @classmethod
    def check_collection(cls, secure: bool) -> None:
        """Refuse a collection this mechanism cannot work with (ConfigError); checked when
        a job is planned, before any backbone loads, and by the engine."""
        del secure

    def cohort_sampler(self, sampler: Any) -> Any:
        """The sampler the run must use (called once, before the first round)."""
        return sampler

    def stop_reason(self, round_num: int) -> str | None:
        """Why round ``round_num`` must not run (a spent budget), or None."""
        del round_num
        return None

    def begin_round(self, round_num: int) -> None:
        """Round ``round_num``'s cohort is drawn; its tasks are built next."""
        del round_num

    def configure(self, settings: TaskSettings) -> TaskSettings:
        """A client's task settings with what this mechanism asks of the client."""
        return settings

    def secure_plan(self, *, bits: int, cohort: int, dim: int) -> EncodingPlan:
        del bits, cohort, dim
        return EncodingPlan()

    def aggregate(
        self, round_num: int, strategy: Strategy, current: Tensors, collected: Collected
    ) -> tuple[Tensors, dict[str, Any]]:
        """The new global adapter from a round's updates, and metrics to record."""
        if collected.updates is not None:
            return strategy.aggregate_train(round_num, current, collected.updates), {}
        total = _secure_total(collected)
        stats = AggregateStats(collected.clients, total.total_weight, total.mean_sq_norm)
        return strategy.aggregate_mean(round_num, current, total.mean, stats), {}

    def record_round(self, round_num: int, *, released: bool) -> dict[str, Any]:
        """Record the round's privacy event durably; the metrics line's privacy fields."""
        del round_num, released
        return {}

    def close(self) -> None:
        """Release what the mechanism holds (the ledger)."""


NoPrivacy = PrivacyMechanism


class _Dp(PrivacyMechanism):
    """Client-level DP: budget, clip on the client, ledger (DpController does the maths).

    ``rounds``: the rounds the run plans (``federation.rounds``), declared to clients with
    the rest of the accountant's parameters so that a client can bound the run's epsilon
    itself (its privacy policy); None declares no run length, which a client with an
    epsilon ceiling refuses."""

    def __init__(self, controller: DpController, rounds: int | None = None) -> None:
        self.controller = controller
        self.rounds = rounds

    def cohort_sampler(self, sampler: Any) -> Any:
        """OS-entropy cohorts when the accounting claims amplification by sampling; else
        the seeded sampler, and the run says which (a log line, ``dp_cohort_sampling`` and
        ``dp_amplification`` on every metrics line)."""
        if self.amplified:
            sampler = from_entropy(sampler)
            self.controller.cohort_sampling = "os_entropy"
            log.info("DP: cohorts drawn from OS entropy (epsilon claims amplification by sampling)")
        else:
            self.controller.cohort_sampling = "seeded" if _seeded(sampler) else "os_entropy"
            log.info(
                "DP: cohorts %s; epsilon is accounted without amplification by sampling",
                "seeded by train.seed" if _seeded(sampler) else "drawn from OS entropy",
            )
        self.controller.amplified = self.amplified
        return sampler

    def stop_reason(self, round_num: int) -> str | None:
        return self.controller.stop_reason(round_num)

    def begin_round(self, round_num: int) -> None:
        self.controller.begin_round(round_num)

    def configure(self, settings: TaskSettings) -> TaskSettings:
        """The clip, and the accountant's parameters a client's policy checks (its own
        accountant recomputes the run's epsilon from them)."""
        c = self.controller
        return settings.replace(
            dp_clip=c.clip,
            dp_mechanism=self.name,
            dp_sampling=c.sampling,
            dp_population=c.population,
            dp_cohort=c.sample_size,
            dp_rounds=self.rounds,
            dp_delta=c.delta,
            dp_accountant=c.accountant,
        )

    def record_round(self, round_num: int, *, released: bool) -> dict[str, Any]:
        return self.controller.record_round(round_num, released=released)

    def close(self) -> None:
        self.controller.close()


class CentralDp(_Dp):
    """The coordinator clips each update again, sums, adds Gaussian noise and divides by
    the cohort (uniform weights): it needs the individual updates."""

    name = "central"
    amplified = True  # RoundPrivacy's sampled Gaussian event

    def configure(self, settings: TaskSettings) -> TaskSettings:
        """Central noise is added here, so its multiplier is declared (a client cannot
        see it; under distributed DP it derives it from its own noise instead)."""
        declared = super().configure(settings)
        return declared.replace(dp_noise_multiplier=self.controller.noise_multiplier)

    @classmethod
    def check_collection(cls, secure: bool) -> None:
        if secure:
            raise ConfigError(
                "dp.mode", "central DP needs individual updates; with secagg use distributed"
            )

    def aggregate(
        self, round_num: int, strategy: Strategy, current: Tensors, collected: Collected
    ) -> tuple[Tensors, dict[str, Any]]:
        if collected.updates is None:
            raise FedPeftError("central DP got a secure sum; it needs individual updates")
        updates = collected.updates
        # released in the clear they would be neither noised nor accounted
        for key in NORM_METRICS:
            collected.record.pop(key, None)
        mean, info = self.controller.noisy_mean([u.delta for u in updates], round_num)
        stats = AggregateStats(len(updates), float(len(updates)))
        return strategy.aggregate_mean(round_num, current, mean, stats), info


class DistributedDp(_Dp):
    """Each client adds discrete Gaussian noise to its encoded update inside the secure
    sum, sized so the survivors' noise adds up to the accounted level."""

    name = "distributed"

    @classmethod
    def check_collection(cls, secure: bool) -> None:
        if not secure:
            raise ConfigError(
                "dp.mode", "distributed noise needs secure aggregation (secagg.enabled = true)"
            )

    def secure_plan(self, *, bits: int, cohort: int, dim: int) -> EncodingPlan:
        """The noise plan, and the round's event recorded durably before any client is
        contacted (so before the unmask stage: a crash after the sum is decoded can never
        leave the round uncounted); :class:`BudgetSpent` if the budget cannot afford it."""
        plan = self.controller.plan_distributed(bits=bits, cohort=cohort, dim=dim)
        self.controller.commit_round()
        return EncodingPlan(
            uniform_weights=True,
            clip_range=self.controller.clip,
            levels=plan.levels,
            noise_sigma=plan.sigma,
            min_survivors=plan.noisy_clients,
        )

    def aggregate(
        self, round_num: int, strategy: Strategy, current: Tensors, collected: Collected
    ) -> tuple[Tensors, dict[str, Any]]:
        new, info = super().aggregate(round_num, strategy, current, collected)
        return new, {**info, "dp_survivors": collected.clients}


def _seeded(sampler: Any) -> bool:
    return bool(getattr(sampler, "seeded", getattr(sampler, "seed", None) is not None))


def _secure_total(collected: Collected) -> Any:
    if collected.total is None:
        raise FedPeftError("a round with neither updates nor a secure sum")
    return collected.total
