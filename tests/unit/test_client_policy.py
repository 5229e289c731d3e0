"""The data owner's floor: ``[client.policy]`` validation, the guard's refusals (σ = 0, a
small cohort, ε above the ceiling, a codec not allowed, no SecAgg when required), the
client's own accountant against the coordinator's ledger, and the encoding bound into the
SecAgg session (a coordinator that tells two clients different things gets no sum)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedpeft.client.policy import PolicyGuard
from fedpeft.client.secure import SecureClient
from fedpeft.config import JobConfig
from fedpeft.config.client import ClientPolicy, load_policy
from fedpeft.errors import ConfigError, ProtocolError
from fedpeft.privacy.secagg import SecAggAborted, SecAggError, SecAggParams, SecAggServer
from fedpeft.privacy.secagg import plan_secagg as plan
from fedpeft.privacy.secagg.params import encoding_digest
from fedpeft.privacy.secagg.updates import SecureEncoding
from fedpeft.protocol.messages import ClientState, TaskSettings, TrainTask

COHORT = tuple(range(10, 16))  # six clients: the complete graph, k = 5, t = 3


# ---- builders ------------------------------------------------------------------------------
def encoding(
    sigma: float = 40.0, levels: int = 2000, clip: float = 0.1, d: int = 64
) -> SecureEncoding:
    return SecureEncoding(
        names=("w",),
        sizes=(d,),
        density=1.0,
        subset_seed=5,
        levels=levels,
        clip_range=clip,
        weight_cap=1,
        bits=30,
        uniform_weights=True,
        with_sq_norm=False,
        noise_sigma=sigma,
    )


def params_for(
    enc: SecureEncoding | None,
    *,
    cohort: tuple[int, ...] = COHORT,
    min_survivors: int = 0,
    round_num: int = 1,
) -> SecAggParams:
    return plan(
        cohort,
        length=(enc or encoding()).length,
        bits=30,
        round_num=round_num,
        seed=3,
        dropout_fraction=0.3,
        min_survivors=min_survivors,
        encoding=None if enc is None else enc.to_dict(),
    )


def task(
    kind: str, settings: TaskSettings = TaskSettings(), *, secagg: bytes = b"", round_num: int = 1
) -> TrainTask:
    return TrainTask(
        round=round_num,
        client_id=COHORT[0],
        seed=0,
        downlink=b"",
        downlink_is_delta=False,
        version=round_num,
        state=ClientState(),
        settings=settings,
        kind=kind,
        secagg=secagg,
    )


def dp(mechanism: str = "central", **changes: Any) -> TaskSettings:
    """A DP task's declared accountant parameters (100 clients, 10 per round, 10 rounds)."""
    declared: dict[str, Any] = {
        "dp_clip": 0.1,
        "dp_mechanism": mechanism,
        "dp_noise_multiplier": 2.0 if mechanism == "central" else None,
        "dp_sampling": "fixed",
        "dp_population": 100,
        "dp_cohort": 10,
        "dp_rounds": 10,
        "dp_delta": 1e-5,
        "dp_accountant": "rdp",
    }
    declared.update(changes)
    return TaskSettings(**declared)


def answer(
    policy: ClientPolicy,
    settings: TaskSettings,
    *,
    enc: SecureEncoding | None = None,
    params: SecAggParams | None = None,
    codec: str = "dense",
    round_num: int = 1,
) -> str | None:
    """What the guard says to a training task: plain when neither ``enc`` nor ``params``
    is given; else the round's advertise stage first (refused there → that reason)."""
    guard = PolicyGuard(policy, codec=codec)
    if enc is None and params is None:
        return guard.check(task("train", settings, round_num=round_num))
    params = params or params_for(enc, min_survivors=5, round_num=round_num)
    refused = guard.check(task("secagg_advertise", secagg=params.to_bytes(), round_num=round_num))
    if refused is not None:
        return refused
    if enc is not None:
        settings = settings.replace(secagg_encoding=enc.to_dict())
    return guard.check(task("train", settings, secagg=b"relay", round_num=round_num))


# ---- the config ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("require_secagg", "yes"),
        ("min_cohort", -1),
        ("min_cohort", 2.5),
        ("max_epsilon", 0.0),
        ("max_epsilon", math.inf),
        ("max_delta", 1.0),
        ("min_noise_multiplier", -0.1),
        ("min_noise_multiplier", math.nan),
        ("allowed_codecs", ("dense", "zip")),
    ],
)
def test_a_bad_policy_value_names_its_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"`client\.policy\.{field}`"):
        ClientPolicy(**{field: value})


def test_the_policy_table_loads_and_flags_override_it(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        "[client.policy]\nrequire_secagg = true\nmin_cohort = 8\nmax_epsilon = 4\n"
        'allowed_codecs = ["compeft"]\n'
    )
    policy = load_policy(path)
    assert policy == ClientPolicy(
        require_secagg=True, min_cohort=8, max_epsilon=4.0, allowed_codecs=("compeft",)
    )
    assert policy.replace(max_epsilon=2.0, min_cohort=None).max_epsilon == 2.0
    assert policy.replace(min_cohort=None).min_cohort == 8  # an unset flag keeps the file's
    assert policy.active and not ClientPolicy().active


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[client.policy]\nmax_epsilonn = 3\n", "client.policy.max_epsilonn"),
        ("[client.policy]\nmin_cohort = 'ten'\n", "client.policy.min_cohort"),
        ("[client.polcy]\n", "client.polcy"),
        ("[model]\nname = 'minilm'\n", "no [client.policy] table"),
        ("[client.policy\n", "not valid TOML"),
    ],
)
def test_a_bad_policy_file_is_named(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re_escape(needle)):
        load_policy(path)
    with pytest.raises(ConfigError, match="--policy"):
        load_policy(tmp_path / "missing.toml")


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


# ---- the guard's refusals, as a matrix ------------------------------------------------------
Case = tuple[str, ClientPolicy, Callable[[ClientPolicy], str | None], str]

REFUSED: list[Case] = [
    # σ = 0: distributed DP whose encoding adds no noise, and central DP declaring z = 0
    (
        "sigma 0, distributed",
        ClientPolicy(min_noise_multiplier=0.5),
        lambda p: answer(p, dp("distributed"), enc=encoding(sigma=0.0)),
        "adds no noise",
    ),
    (
        "sigma 0, distributed, under an epsilon ceiling",
        ClientPolicy(max_epsilon=8.0),
        lambda p: answer(p, dp("distributed"), enc=encoding(sigma=0.0)),
        "adds no noise",
    ),
    (
        "sigma 0, central",
        ClientPolicy(min_noise_multiplier=0.5),
        lambda p: answer(p, dp("central", dp_noise_multiplier=0.0)),
        "noise_multiplier",
    ),
    (
        "noise below the floor",
        ClientPolicy(min_noise_multiplier=1.5),
        lambda p: answer(p, dp("central", dp_noise_multiplier=2.0)),  # fixed: 2.0 / 2 = 1.0
        "client.policy.min_noise_multiplier",
    ),
    (
        "no DP at all",
        ClientPolicy(max_epsilon=8.0),
        lambda p: answer(p, TaskSettings(lr=0.1)),
        "declares no differential privacy",
    ),
    # a cohort too small: the survivor floor, not the cohort's size
    (
        "cohort too small",
        ClientPolicy(min_cohort=6),
        lambda p: answer(p, TaskSettings(), enc=encoding(sigma=0.0)),  # floor max(5, t+1=4) = 5
        "client.policy.min_cohort",
    ),
    (
        "a cohort floor on a plain task",
        ClientPolicy(min_cohort=3),
        lambda p: answer(p, TaskSettings()),
        "client.policy.min_cohort",
    ),
    # epsilon above the ceiling (central: 10 rounds at z 2.0 fixed ≈ 4.7; distributed)
    (
        "epsilon above the ceiling, central",
        ClientPolicy(max_epsilon=1.0),
        lambda p: answer(p, dp("central")),
        "client.policy.max_epsilon",
    ),
    (
        "epsilon above the ceiling, distributed",
        ClientPolicy(max_epsilon=1.0),
        lambda p: answer(p, dp("distributed"), enc=encoding(sigma=40.0)),
        "client.policy.max_epsilon",
    ),
    (
        "a round beyond the declared run",
        ClientPolicy(max_epsilon=100.0),
        lambda p: answer(p, dp("central", dp_rounds=3), round_num=4),
        "run declared to last 3 rounds",
    ),
    (
        "no planned rounds declared",
        ClientPolicy(max_epsilon=100.0),
        lambda p: answer(p, dp("central", dp_rounds=None)),
        "declares no rounds",
    ),
    (
        "delta above the ceiling",
        ClientPolicy(max_epsilon=100.0),
        lambda p: answer(p, dp("central", dp_delta=1e-3)),
        "client.policy.max_delta",
    ),
    (
        "a codec not allowed",
        ClientPolicy(allowed_codecs=("compeft",)),
        lambda p: answer(p, TaskSettings(), codec="dense"),
        "client.policy.allowed_codecs",
    ),
    (
        "no SecAgg when required",
        ClientPolicy(require_secagg=True),
        lambda p: answer(p, TaskSettings()),
        "client.policy.require_secagg",
    ),
    (
        "parameters that bind no encoding",
        ClientPolicy(require_secagg=True),
        lambda p: answer(p, TaskSettings(), params=params_for(None)),
        "bind no update encoding",
    ),
    (
        "an encoding other than the bound one",
        ClientPolicy(require_secagg=True),
        lambda p: answer(
            p, TaskSettings(), enc=encoding(sigma=0.0), params=params_for(encoding(sigma=40.0))
        ),
        "is not the one",
    ),
]


@pytest.mark.parametrize(("name", "policy", "run", "needle"), REFUSED, ids=[c[0] for c in REFUSED])
def test_the_guard_refuses_a_task_below_the_floor(
    name: str, policy: ClientPolicy, run: Callable[[ClientPolicy], str | None], needle: str
) -> None:
    reason = run(policy)
    assert reason is not None and needle in reason, f"{name}: {reason!r}"


ACCEPTED: list[Case] = [
    (
        "no policy, sigma 0",
        ClientPolicy(),
        lambda p: answer(p, TaskSettings(), enc=encoding(0.0)),
        "",
    ),
    (
        "cohort at the floor",
        ClientPolicy(min_cohort=5),
        lambda p: answer(p, TaskSettings(), enc=encoding()),
        "",
    ),
    (
        "epsilon under the ceiling",
        ClientPolicy(max_epsilon=8.0),
        lambda p: answer(p, dp("central")),
        "",
    ),
    (
        "distributed, noise above the floor",
        ClientPolicy(min_noise_multiplier=0.5, max_epsilon=50.0, require_secagg=True),
        lambda p: answer(p, dp("distributed"), enc=encoding(sigma=2000.0)),
        "",
    ),
    (
        "an allowed codec",
        ClientPolicy(allowed_codecs=("compeft",)),
        lambda p: answer(p, TaskSettings(), codec="compeft"),
        "",
    ),
    (
        "secagg when required",
        ClientPolicy(require_secagg=True),
        lambda p: answer(p, TaskSettings(), enc=encoding()),
        "",
    ),
]


@pytest.mark.parametrize(
    ("name", "policy", "run", "needle"), ACCEPTED, ids=[c[0] for c in ACCEPTED]
)
def test_the_guard_takes_a_task_that_meets_the_floor(
    name: str, policy: ClientPolicy, run: Callable[[ClientPolicy], str | None], needle: str
) -> None:
    del needle
    assert run(policy) is None, name


def test_key_and_unmask_stages_pass_and_a_round_without_advertise_is_refused() -> None:
    guard = PolicyGuard(ClientPolicy(require_secagg=True), codec="dense")
    assert guard.check(task("secagg_share", secagg=b"x")) is None
    assert guard.check(task("secagg_unmask", secagg=b"x")) is None
    reason = guard.check(task("train", secagg=b"relay"))
    assert reason is not None and "no secure-aggregation parameters" in reason


# ---- the client's accountant against the coordinator's ledger ------------------------------
@pytest.mark.parametrize("distributed", [False, True], ids=["central", "distributed"])
def test_the_clients_epsilon_is_the_coordinators_ledger(distributed: bool, tmp_path: Path) -> None:
    """Prepare: a DP run's mechanism records 3 rounds in its ledger. Execute: a client
    checks a task configured by that mechanism. Assert: a ceiling just above the ledger's
    epsilon takes it, one just below refuses it — the declaration is faithful."""
    from fedpeft.coordinator.dp import make_dp_controller
    from fedpeft.coordinator.privacy import CentralDp, DistributedDp
    from fedpeft.coordinator.secure import SecureRound

    cfg = JobConfig().replace(
        {
            "dp.noise_multiplier": 1.0,
            "federation.clients": 50,
            "federation.clients_per_round": 6,
            "federation.rounds": 3,
            "secagg.enabled": distributed,
        }
    )
    controller = make_dp_controller(cfg, tmp_path, distributed=distributed, population=50)
    mechanism = (DistributedDp if distributed else CentralDp)(controller, rounds=3)
    enc = params = None
    for r in (1, 2, 3):
        mechanism.begin_round(r)
        if distributed:
            plan_ = mechanism.secure_plan(bits=30, cohort=len(COHORT), dim=64)
            enc = SecureRound(
                tolerated_dropout=0.3, bits=30, clip_range=0.05, weight_cap=1, density=1.0, seed=0
            ).encoding(
                r,
                len(COHORT),
                {"w": (64,)},
                with_sq_norm=False,
                uniform_weights=True,
                clip_range=plan_.clip_range,
                levels=plan_.levels,
                noise_sigma=plan_.noise_sigma,
            )
            params = params_for(enc, min_survivors=plan_.min_survivors, round_num=r)
        mechanism.record_round(r, released=True)
    ledger = controller.epsilon_spent
    settings = mechanism.configure(TaskSettings())
    controller.close()
    above = ClientPolicy(max_epsilon=ledger * (1 + 1e-6))
    below = ClientPolicy(max_epsilon=ledger * (1 - 1e-3))
    assert answer(above, settings, enc=enc, params=params, round_num=3) is None
    reason = answer(below, settings, enc=enc, params=params, round_num=3)
    assert reason is not None and "client.policy.max_epsilon" in reason


# ---- the encoding bound into the SecAgg session ---------------------------------------------
def stage(
    client: SecureClient, cid: int, kind: str, message: bytes, enc: SecureEncoding | None = None
) -> bytes:
    settings = TaskSettings() if enc is None else TaskSettings(secagg_encoding=enc.to_dict())
    t = dataclasses.replace(task(kind, settings, secagg=message), client_id=cid)
    if kind == "train":
        vector = np.arange(client.session(t).params.length, dtype=np.uint64)
        return client.masked_input(t, vector)
    return client.stage(t)


def lying_round(
    victim_params: SecAggParams,
    honest: SecAggParams,
    victim_enc: SecureEncoding,
    enc: SecureEncoding,
) -> tuple[SecAggServer, dict[int, str]]:
    """Run a round whose coordinator (the server holds ``honest``) hands the first client
    ``victim_params`` and ``victim_enc`` and everyone else ``honest`` and ``enc``, through
    the clients' real SecAgg code (:class:`SecureClient`). Returns the server and each
    client's refusal at the masked-input stage."""
    victim = honest.clients[0]
    server = SecAggServer(honest)
    clients = {c: SecureClient() for c in honest.clients}
    for c, client in clients.items():
        given = victim_params if c == victim else honest
        server.receive(c, stage(client, c, "secagg_advertise", given.to_bytes()))
    server.close_stage()
    for c in server.expected():
        server.receive(c, stage(clients[c], c, "secagg_share", server.message_for(c)))
    server.close_stage()
    refused: dict[int, str] = {}
    for c in server.expected():
        try:
            out = stage(
                clients[c], c, "train", server.message_for(c), victim_enc if c == victim else enc
            )
        except SecAggError as exc:
            refused[c] = str(exc)
            continue
        server.receive(c, out)
    try:
        server.close_stage()
        for c in server.expected():
            server.receive(c, stage(clients[c], c, "secagg_unmask", server.message_for(c)))
        server.close_stage()
    except SecAggAborted as exc:
        refused[-1] = str(exc)
    return server, refused


def test_an_honest_round_completes() -> None:
    enc = encoding(sigma=40.0)
    honest = params_for(enc, min_survivors=5)
    server, refused = lying_round(honest, honest, enc, enc)
    assert refused == {}
    assert server.result().shape == (honest.length,)


def test_a_coordinator_giving_one_client_other_parameters_gets_no_sum() -> None:
    """σ = 0 for one client, with parameters that bind its encoding: its neighbours cannot
    open its shares nor it theirs, nobody sends a masked input, the round aborts.
    Mutation tried: SecAggClient._share_key returning the plain X25519 key (no binding)
    — the round then completes with the victim's noiseless input in the sum."""
    enc, zero = encoding(sigma=40.0), encoding(sigma=0.0)
    honest = params_for(enc, min_survivors=5)
    lie = dataclasses.replace(honest, encoding_digest=encoding_digest(zero.to_dict()))
    server, refused = lying_round(lie, honest, zero, enc)
    assert set(honest.clients) <= set(refused)  # every client refused its masked input
    assert all("AES-GCM" in refused[c] for c in honest.clients)
    assert -1 in refused  # the server aborted: no masked input to sum
    with pytest.raises(SecAggError):
        server.result()


def test_a_coordinator_sending_one_client_another_encoding_is_refused() -> None:
    """The same parameters for everyone, but σ = 0 in one client's masked-input task: that
    client refuses before its input leaves. Mutation tried: SecureClient.masked_input
    without ``check_encoding`` — the victim's masked input is then accepted."""
    enc, zero = encoding(sigma=40.0), encoding(sigma=0.0)
    honest = params_for(enc, min_survivors=5)
    server, refused = lying_round(honest, honest, zero, enc)
    victim = honest.clients[0]
    assert "is not the one the round's parameters bind" in refused[victim]
    assert set(refused) == {victim}  # the others' round completes without it
    assert victim not in server.survivors and len(server.survivors) == len(COHORT) - 1


def test_the_digest_is_stable_across_the_wire_and_differs_for_any_field() -> None:
    enc = encoding()
    wire = enc.to_dict() | {"clip_range": 0.1, "density": 1}  # an int where a float was
    assert encoding_digest(wire) == encoding_digest(enc.to_dict())
    for change in ({"noise_sigma": 0.0}, {"levels": 1999}, {"subset_seed": 6}, {"clip_range": 0.2}):
        assert encoding_digest(enc.to_dict() | change) != encoding_digest(enc.to_dict())
    params = params_for(enc)
    assert SecAggParams.from_bytes(params.to_bytes()) == params
    with pytest.raises(ProtocolError):
        params.check_encoding(None)
    with pytest.raises(ConfigError, match=r"secagg\.encoding_digest"):
        dataclasses.replace(params, encoding_digest="not-hex")
