"""Privacy mechanisms in a round, behind one interface (as Flower wraps a strategy for DP).

The engine calls a :class:`PrivacyMechanism` at fixed points and never branches on which
one it holds:

* :meth:`~PrivacyMechanism.stop_reason` before a round (the budget);
* :meth:`~PrivacyMechanism.configure` — what it adds to each client's task (the clip);
* :meth:`~PrivacyMechanism.secure_plan` — under secure aggregation, how clients encode
  (uniform weights, the clip range, distributed noise);
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

from typing import TYPE_CHECKING, Any

from fedpeft.aggregation import AggregateStats, Strategy
from fedpeft.coordinator.collect import Collected, EncodingPlan
from fedpeft.errors import ConfigError, FedPeftError
from fedpeft.protocol.messages import TaskSettings, Tensors

if TYPE_CHECKING:
    from fedpeft.coordinator.dp import DpController


class PrivacyMechanism:
    """No privacy mechanism: the hooks' neutral answers (subclasses override)."""

    name = "none"

    @classmethod
    def check_collection(cls, secure: bool) -> None:
        """Refuse a collection this mechanism cannot work with (ConfigError); checked when
        a job is planned, before any backbone loads, and by the engine."""
        del secure

    def stop_reason(self, round_num: int) -> str | None:
        """Why round ``round_num`` must not run (a spent budget), or None."""
        del round_num
        return None

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
    """Client-level DP: budget, clip on the client, ledger (DpController does the maths)."""

    def __init__(self, controller: DpController) -> None:
        self.controller = controller

    def stop_reason(self, round_num: int) -> str | None:
        return self.controller.stop_reason(round_num)

    def configure(self, settings: TaskSettings) -> TaskSettings:
        return settings.replace(dp_clip=self.controller.clip)

    def record_round(self, round_num: int, *, released: bool) -> dict[str, Any]:
        return self.controller.record_round(round_num, released=released)

    def close(self) -> None:
        self.controller.close()


class CentralDp(_Dp):
    """The coordinator clips each update again, sums, adds Gaussian noise and divides by
    the cohort (uniform weights): it needs the individual updates."""

    name = "central"

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
        plan = self.controller.plan_distributed(bits=bits, cohort=cohort, dim=dim)
        return EncodingPlan(
            uniform_weights=True,
            clip_range=self.controller.clip,
            levels=plan.levels,
            noise_sigma=plan.sigma,
        )

    def aggregate(
        self, round_num: int, strategy: Strategy, current: Tensors, collected: Collected
    ) -> tuple[Tensors, dict[str, Any]]:
        new, info = super().aggregate(round_num, strategy, current, collected)
        return new, {**info, "dp_survivors": collected.clients}


def _secure_total(collected: Collected) -> Any:
    if collected.total is None:
        raise FedPeftError("a round with neither updates nor a secure sum")
    return collected.total
