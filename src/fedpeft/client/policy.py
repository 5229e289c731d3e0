"""The data owner's floor: a client's privacy policy, checked on every task before training.

In Flower, FATE-LLM or FederatedScope the server's configuration *is* the privacy: a
client trains for whatever arrives. Here a daemon (``fedpeft client run --policy …``)
holds a :class:`~fedpeft.config.client.ClientPolicy` and :class:`PolicyGuard` refuses,
with the reason, any task below it — the daemon sends the reason back as its result's
error, and the coordinator logs it and records it in the round's ``rejected`` field.

What each floor is checked against, and how much of it the client verifies itself:

* ``require_secagg`` — the task is a SecAgg+ masked-input task (``TrainTask.secagg``);
* ``min_cohort`` — the round's ``SecAggParams.survivor_floor``: the fewest clients in any
  sum the coordinator can unmask, because every client refuses to unmask below it (the
  cohort size alone would not do: a coordinator may declare all but three dropped);
* ``min_noise_multiplier`` and ``max_epsilon`` — the client's own accountant
  (:mod:`fedpeft.privacy.accountant`) over the DP parameters the task declares
  (``TaskSettings.dp_*``). Under **distributed** DP the round's event is derived from what
  the client itself adds and enforces: its discrete Gaussian σ, the quantisation levels
  and clip of the encoding bound to the round's parameters, its own L2 clip, and the
  survivor floor — nothing is taken on trust but the population and the planned rounds.
  Under **central** DP the coordinator adds the noise, so its declared multiplier,
  sampling and population are taken on trust (amplification by sampling included): a data
  owner who wants a floor it can verify requires secure aggregation too;
* ``allowed_codecs`` — the job's ``codec.name`` (from the job the daemon registered for).

Every check assumes each round of the run is like the task in hand, and a task numbered
beyond the declared rounds is refused. Under secure aggregation a policy that sets any
floor also demands that the round's parameters bind the encoding (an unbound encoding
could differ between clients).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fedpeft.config.client import SECTION, ClientPolicy
from fedpeft.errors import ConfigError, ProtocolError
from fedpeft.protocol.messages import TaskSettings, TrainTask

if TYPE_CHECKING:
    from fedpeft.privacy.accountant import RoundPrivacy
    from fedpeft.privacy.secagg import SecAggParams

#: rounds of SecAgg parameters kept (a round's advertise stage precedes its training task)
KEEP_ROUNDS = 2


class PolicyGuard:
    """Checks tasks against one client's policy; remembers the SecAgg parameters of the
    rounds whose advertise stage it let through."""

    def __init__(self, policy: ClientPolicy, codec: str) -> None:
        self.policy = policy
        self.codec = codec
        self._params: dict[int, SecAggParams] = {}  # round -> SecAggParams accepted at advertise

    def check(self, task: TrainTask) -> str | None:
        """Why this client must not answer ``task``, or None. The reason names the policy
        field it falls short of."""
        if task.kind == "secagg_advertise":
            return self._check_params(task)
        if task.kind.startswith("secagg_"):
            return None  # key and unmask stages release nothing the floors are about
        return self._check_work(task)

    # ---- the stages ---------------------------------------------------------------------
    def _check_params(self, task: TrainTask) -> str | None:
        from fedpeft.privacy.secagg import SecAggParams

        try:
            params = SecAggParams.from_bytes(task.secagg)
        except (ProtocolError, ConfigError) as exc:
            return f"unreadable secure-aggregation parameters: {exc}"
        floor, cohort = params.survivor_floor, len(params.clients)
        if floor < self.policy.min_cohort:
            return (
                f"`{SECTION}.min_cohort`: round {task.round}'s parameters let the coordinator "
                f"unmask a sum over as few as {floor} clients (cohort {cohort}); this client's "
                f"floor is {self.policy.min_cohort}"
            )
        self._params[task.round] = params
        for old in sorted(self._params)[:-KEEP_ROUNDS]:
            del self._params[old]
        return None

    def _check_work(self, task: TrainTask) -> str | None:
        policy = self.policy
        if policy.allowed_codecs and self.codec not in policy.allowed_codecs:
            return (
                f"`{SECTION}.allowed_codecs`: the job's codec {self.codec!r} is not one of "
                f"{list(policy.allowed_codecs)}"
            )
        secure = bool(task.secagg)
        if policy.needs_secagg and not secure:
            field = "require_secagg" if policy.require_secagg else "min_cohort"
            return (
                f"`{SECTION}.{field}`: the task is not securely aggregated (the coordinator "
                "would see this client's own update, and no cohort floor is enforced)"
            )
        params = None
        if secure:
            params = self._params.get(task.round)
            if params is None:
                return (
                    f"no secure-aggregation parameters were accepted for round {task.round} "
                    "(its advertise stage did not reach this client)"
                )
            reason = self._check_binding(params, task.settings)
            if reason is not None:
                return reason
        if not policy.needs_dp:
            return None
        if task.kind != "train":
            return (
                f"`{SECTION}`: a {task.kind} task releases statistics of the local data that no "
                "DP accountant counts"
            )
        return self._check_dp(task, params)

    def _check_binding(self, params: SecAggParams, settings: TaskSettings) -> str | None:
        if not params.encoding_digest:
            return (
                f"`{SECTION}`: round {params.round}'s parameters bind no update encoding, so "
                "clients of one cohort could be given different noise or clipping"
            )
        try:
            params.check_encoding(settings.secagg_encoding)
        except ProtocolError as exc:
            return str(exc)
        return None

    # ---- differential privacy ---------------------------------------------------------------
    def _check_dp(self, task: TrainTask, params: SecAggParams | None) -> str | None:
        """The floors on noise and epsilon, from the task's declared accountant parameters
        and (distributed DP) the client's own noise."""
        from fedpeft.privacy.accountant import SENSITIVITY_FACTOR, epsilon

        s, policy = task.settings, self.policy
        try:
            event = self._round_event(s, params)
        except ConfigError as exc:
            return f"`{SECTION}`: the task's DP parameters do not describe a private round: {exc}"
        if isinstance(event, str):
            return event
        multiplier = event.noise_multiplier / SENSITIVITY_FACTOR[event.sampling]
        if multiplier < policy.min_noise_multiplier:
            return (
                f"`{SECTION}.min_noise_multiplier`: the round's noise multiplier is "
                f"{multiplier:.4g}, below this client's floor {policy.min_noise_multiplier:g}"
            )
        if policy.max_epsilon is None:
            return None
        delta, rounds, accountant = s.dp_delta, s.dp_rounds, s.dp_accountant
        if delta is None or rounds is None or accountant is None:
            missing = "delta" if delta is None else "rounds" if rounds is None else "accountant"
            return (
                f"`{SECTION}.max_epsilon`: the task declares no {missing}, so this client "
                "cannot bound the run's epsilon"
            )
        if delta > policy.max_delta:
            return (
                f"`{SECTION}.max_delta`: the task declares delta {delta:g} > {policy.max_delta:g}"
            )
        if task.round > rounds:
            return (
                f"`{SECTION}.max_epsilon`: round {task.round} of a run declared to last "
                f"{rounds} rounds"
            )
        try:
            spent = epsilon([event] * max(1, rounds), delta, accountant)
        except ConfigError as exc:
            return f"`{SECTION}.max_epsilon`: the task's accountant parameters are refused: {exc}"
        if not spent <= policy.max_epsilon:  # NaN or inf too
            return (
                f"`{SECTION}.max_epsilon`: {rounds} rounds like this one spend epsilon "
                f"{spent:.4g} (delta {delta:g}, {accountant}), above this client's "
                f"{policy.max_epsilon:g}"
            )
        return None

    def _round_event(self, s: TaskSettings, params: SecAggParams | None) -> RoundPrivacy | str:
        """The accountant's view of one round (RoundPrivacy), or the reason there is none."""
        from fedpeft.privacy.accountant import RoundPrivacy

        if s.dp_mechanism not in ("central", "distributed"):
            return f"`{SECTION}`: the task declares no differential privacy (its noise is 0)"
        if s.dp_sampling is None or s.dp_population is None or s.dp_cohort is None:
            return f"`{SECTION}`: the task declares no sampling, population or cohort"
        common: dict[str, Any] = {
            "sampling": s.dp_sampling,
            "population": s.dp_population,
            "sample_size": s.dp_cohort,
        }
        if s.dp_mechanism == "central":
            if s.dp_noise_multiplier is None:
                return f"`{SECTION}`: a central-DP task declares no noise multiplier"
            return RoundPrivacy(noise_multiplier=s.dp_noise_multiplier, **common)
        return self._distributed_event(s, params, common)

    @staticmethod
    def _distributed_event(
        s: TaskSettings, params: SecAggParams | None, common: dict[str, Any]
    ) -> RoundPrivacy | str:
        """Distributed DP's round from what this client adds and enforces: the encoding's
        σ and scale, its own L2 clip, and the survivor floor of the round's parameters."""
        from fedpeft.privacy.accountant import RoundPrivacy
        from fedpeft.privacy.discrete_gaussian import integer_l2_bound
        from fedpeft.privacy.secagg.updates import SecureEncoding

        if params is None or s.secagg_encoding is None:
            return f"`{SECTION}`: a distributed-DP task without secure aggregation"
        try:
            enc = SecureEncoding.from_dict(s.secagg_encoding)
        except ProtocolError as exc:
            return str(exc)
        if not (math.isfinite(enc.noise_sigma) and enc.noise_sigma > 0):
            return (
                f"`{SECTION}`: the round's encoding adds no noise (sigma {enc.noise_sigma:g}) "
                "though the task declares distributed DP"
            )
        if s.dp_clip is None or not (s.dp_clip > 0 and enc.clip_range > 0 and enc.levels >= 1):
            return f"`{SECTION}`: a distributed-DP task without its clip"
        scale = enc.levels / enc.clip_range
        return RoundPrivacy.distributed(
            local_sigma=enc.noise_sigma,
            noisy_clients=params.survivor_floor,
            l2_bound=integer_l2_bound(s.dp_clip, scale, enc.sent),
            dimension=enc.sent,
            **common,
        )
