"""SecAgg+ library: exact sums under every tolerated dropout pattern, what the server sees,
bad messages rejected with the client's id and no state change, the client's refusals."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fedpeft.errors import ConfigError, ProtocolError
from fedpeft.privacy.secagg import (
    SERVER,
    ClientStage,
    SecAggAborted,
    SecAggClient,
    SecAggError,
    SecAggParams,
    SecAggRejected,
    SecAggServer,
    Stage,
    plan_secagg,
    unpack,
)
from fedpeft.privacy.secagg.messages import TO_CLIENT, UNMASK_ENTRY, pack_entries, pack_ids
from fedpeft.privacy.secagg.simulate import STAGES, simulate_round
from fedpeft.privacy.secagg.wire import decode_frame, encode_frame

# -- helpers -------------------------------------------------------------------


def make_inputs(params: SecAggParams, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    top = 1 << params.bits
    return {c: rng.integers(0, top, size=params.length, dtype=np.uint64) for c in params.clients}


def expected_sum(params: SecAggParams, inputs: Mapping[int, np.ndarray], who: Sequence[int]):
    total = np.zeros(params.length, dtype=np.uint64)
    for c in who:
        total += inputs[c]  # wraps mod 2**64, a multiple of 2**bits
    return total & np.uint64((1 << params.bits) - 1)


def reframe(message: bytes, body: bytes) -> bytes:
    """The same frame header with another body (and a valid checksum)."""
    f = decode_frame(message)
    return encode_frame(f.stage, f.round, f.sender, f.recipient, body)


class Round:
    """Drive one round by hand, stage by stage."""

    def __init__(self, n: int = 5, length: int = 32, bits: int = 16, **plan: object) -> None:
        self.params = plan_secagg(
            list(range(10, 10 + n)), length=length, bits=bits, round_num=7, seed=1, **plan
        )
        self.server = SecAggServer(self.params)
        self.clients = {c: SecAggClient(c, self.params) for c in self.params.clients}
        self.inputs = make_inputs(self.params)

    def advertise(self) -> None:
        for c, client in self.clients.items():
            self.server.receive(c, client.advertise_keys())
        self.server.close_stage()

    def share(self) -> None:
        for c in self.server.expected():
            self.server.receive(c, self.clients[c].share_keys(self.server.message_for(c)))
        self.server.close_stage()

    def mask(self, skip: Sequence[int] = ()) -> None:
        for c in self.server.expected():
            out = self.clients[c].masked_input(self.server.message_for(c), self.inputs[c])
            if c not in skip:
                self.server.receive(c, out)
        self.server.close_stage()

    def unmask(self) -> None:
        for c in self.server.expected():
            self.server.receive(c, self.clients[c].unmask(self.server.message_for(c)))
        self.server.close_stage()


# -- sums ----------------------------------------------------------------------


def tolerated_patterns(n: int, max_drops: int):
    """Every assignment of a drop stage (or none) to at most ``max_drops`` of n clients."""
    for d in range(max_drops + 1):
        for who in itertools.combinations(range(n), d):
            for stages in itertools.product(STAGES, repeat=d):
                yield dict(zip(who, stages, strict=True))


@pytest.mark.parametrize(
    "n", [3, 4, 5, pytest.param(6, marks=pytest.mark.slow), pytest.param(7, marks=pytest.mark.slow)]
)
def test_every_tolerated_dropout_pattern_gives_the_exact_sum(n: int) -> None:
    params = plan_secagg(range(n), length=24, bits=13, round_num=2, seed=n)
    # complete graph: the round must complete whenever at most k - t clients drop
    assert params.degree == n - 1
    inputs = make_inputs(params, seed=n)
    patterns = list(tolerated_patterns(n, params.degree - params.threshold))
    assert len(patterns) >= 1
    for pattern in patterns:
        drop = {s: [c for c, st in pattern.items() if st == s] for s in STAGES}
        run = simulate_round(params, inputs, drop)
        survivors = [
            c for c in params.clients if pattern.get(c) not in ("advertise", "share", "mask")
        ]
        assert run.server.survivors == tuple(survivors), pattern
        assert np.array_equal(run.server.result(), expected_sum(params, inputs, survivors))


def test_patterns_beyond_the_threshold_abort_or_sum_exactly() -> None:
    """n = 4 (k = 3, t = 2) tolerates one dropout; every two-client pattern must end in
    SecAggAborted (the guarantee of the complete graph is tight) or the exact sum — never
    a wrong sum and never another error."""
    params = plan_secagg(range(4), length=8, bits=9, round_num=0, seed=0)
    inputs = make_inputs(params)
    outcomes = {"sum": 0, "aborted": 0}
    patterns = [p for p in tolerated_patterns(4, 2) if len(p) == 2]
    for pattern in patterns:
        drop = {s: [c for c, st in pattern.items() if st == s] for s in STAGES}
        try:
            run = simulate_round(params, inputs, drop)
        except SecAggAborted:
            outcomes["aborted"] += 1
            continue
        outcomes["sum"] += 1
        want = expected_sum(params, inputs, run.server.survivors)
        assert np.array_equal(run.server.result(), want)
    assert outcomes["aborted"] + outcomes["sum"] == len(patterns) == 6 * 16
    assert outcomes["aborted"] > 0


def test_sparse_graph_sum_with_dropouts_at_every_stage() -> None:
    params = plan_secagg(range(40), length=50, bits=40, round_num=3, seed=5, dropout_fraction=0.05)
    assert params.degree < 39  # SecAgg+ proper, not the complete graph
    inputs = make_inputs(params)
    drop = {"advertise": [0], "share": [7], "mask": [13], "unmask": [21]}
    run = simulate_round(params, inputs, drop)
    survivors = [c for c in params.clients if c not in (0, 7, 13)]
    assert run.server.dropped == (0, 7, 13)
    assert np.array_equal(run.server.result(), expected_sum(params, inputs, survivors))


def test_below_threshold_aborts_and_never_gives_a_result() -> None:
    params = plan_secagg(range(5), length=8, bits=8, round_num=1, seed=0)  # k=4, t=3
    with pytest.raises(SecAggAborted, match="t=3"):
        simulate_round(params, make_inputs(params), {"mask": [0, 1]})
    r = Round(n=5)
    r.advertise()
    r.share()
    with pytest.raises(SecAggAborted):
        r.mask(skip=[10, 11])
    assert r.server.stage == "aborted"
    with pytest.raises(SecAggError, match="no result"):
        r.server.result()
    with pytest.raises(SecAggRejected):
        r.server.receive(12, b"anything")


def test_stage_bytes_count_every_message() -> None:
    params = plan_secagg(range(6), length=1000, bits=20, round_num=0, seed=0)
    run = simulate_round(params, make_inputs(params))
    server = run.server
    assert set(server.stage_bytes) == set(STAGES)
    # the masked vectors are bit-packed: 1000 x 20 bits = 2500 bytes plus the frame
    mask_in = server.stage_bytes["mask"][0]
    assert 6 * 2500 < mask_in < 6 * 2600


# -- what the server sees ------------------------------------------------------


def test_masked_vectors_look_uniform_and_uncorrelated_with_the_input() -> None:
    m, bits = 40_000, 16
    params = plan_secagg(range(4), length=m, bits=bits, round_num=0, seed=0)
    rng = np.random.default_rng(3)
    # a very structured input: a ramp, and all-zero for another client
    inputs = {c: rng.integers(0, 1 << bits, m, dtype=np.uint64) for c in params.clients}
    inputs[0] = (np.arange(m, dtype=np.uint64) * 7) % (1 << bits)
    inputs[1] = np.zeros(m, dtype=np.uint64)
    server = SecAggServer(params)
    clients = {c: SecAggClient(c, params) for c in params.clients}
    for c in params.clients:
        server.receive(c, clients[c].advertise_keys())
    server.close_stage()
    for c in params.clients:
        server.receive(c, clients[c].share_keys(server.message_for(c)))
    server.close_stage()
    for c in (0, 1, 2):
        msg = clients[c].masked_input(server.message_for(c), inputs[c])
        seen = unpack(decode_frame(msg).body, bits, m)
        top = (seen >> np.uint64(bits - 8)).astype(np.int64)  # the top byte
        counts = np.bincount(top, minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-4, c
        low = (seen & np.uint64(0xFF)).astype(np.int64)
        assert stats.chisquare(np.bincount(low, minlength=256)).pvalue > 1e-4, c
        if c != 1:
            r = np.corrcoef(seen.astype(np.float64), inputs[c].astype(np.float64))[0, 1]
            assert abs(r) < 5 / np.sqrt(m), (c, r)


# -- bad input: rejected with the client id, state unchanged -------------------


def _mask_relay_with(message: bytes, edit) -> bytes:
    from fedpeft.privacy.secagg.messages import unpack_entries

    rows = [list(row) for row in unpack_entries(TO_CLIENT, decode_frame(message).body, "relay")]
    edit(rows)
    return reframe(message, pack_entries(TO_CLIENT, [tuple(r) for r in rows]))


def test_tampered_ciphertext_is_rejected_naming_its_sender_and_changes_nothing() -> None:
    r = Round(n=5)
    r.advertise()
    r.share()
    target = r.params.clients[0]
    genuine = r.server.message_for(target)
    sender_holder: dict[str, int] = {}

    def flip(rows):
        sender_holder["id"] = rows[1][0]
        blob = bytearray(rows[1][1])
        blob[20] ^= 0x01
        rows[1][1] = bytes(blob)

    forged = _mask_relay_with(genuine, flip)
    client = r.clients[target]
    with pytest.raises(SecAggRejected, match="AES-GCM") as info:
        client.masked_input(forged, r.inputs[target])
    assert info.value.client_id == sender_holder["id"]
    assert client.stage == ClientStage.SHARED  # unchanged: the genuine relay still works
    r.server.receive(target, client.masked_input(genuine, r.inputs[target]))


def test_ciphertext_delivered_to_the_wrong_client_is_rejected() -> None:
    r = Round(n=5)
    r.advertise()
    r.share()
    a, b = r.params.clients[0], r.params.clients[1]
    for_a = r.server.message_for(a)
    for_b = r.server.message_for(b)
    from fedpeft.privacy.secagg.messages import unpack_entries

    rows_b = dict(unpack_entries(TO_CLIENT, decode_frame(for_b).body, "relay"))
    third = next(s for s in rows_b if s != a)

    def swap(rows):  # give a the ciphertext `third` wrote for b
        for row in rows:
            if row[0] == third:
                row[1] = rows_b[third]

    with pytest.raises(SecAggRejected) as info:
        r.clients[a].masked_input(_mask_relay_with(for_a, swap), r.inputs[a])
    assert info.value.client_id == third
    r.clients[a].masked_input(for_a, r.inputs[a])  # state unchanged


def test_share_for_a_non_neighbour_is_rejected_by_the_server() -> None:
    r = Round(n=20, dropout_fraction=0.0)
    assert r.params.degree < 19
    r.advertise()
    c = r.params.clients[0]
    reply = r.clients[c].share_keys(r.server.message_for(c))
    from fedpeft.privacy.secagg.messages import SHARE_ENTRY, unpack_entries

    rows = unpack_entries(SHARE_ENTRY, decode_frame(reply).body, "shares")
    outsider = next(x for x in r.params.clients if x != c and x not in r.params.neighbours(c))
    bad = [(outsider, rows[0][1]), *rows[1:]]
    with pytest.raises(SecAggRejected, match=f"client {outsider}") as info:
        r.server.receive(c, reframe(reply, pack_entries(SHARE_ENTRY, bad)))
    assert info.value.client_id == c
    missing = rows[1:]
    with pytest.raises(SecAggRejected, match="no share for neighbour"):
        r.server.receive(c, reframe(reply, pack_entries(SHARE_ENTRY, missing)))
    assert r.server.received() == ()
    r.server.receive(c, reply)
    assert r.server.received() == (c,)


def test_wrong_length_duplicate_and_corrupt_masked_inputs_are_rejected() -> None:
    r = Round(n=4, length=100, bits=12)
    r.advertise()
    r.share()
    c = r.params.clients[2]
    good = r.clients[c].masked_input(r.server.message_for(c), r.inputs[c])
    short = reframe(good, bytes(decode_frame(good).body)[:-1])
    with pytest.raises(SecAggRejected, match="bytes") as info:
        r.server.receive(c, short)
    assert info.value.client_id == c
    flipped = bytearray(good)
    flipped[60] ^= 0xFF  # the checksum catches it
    with pytest.raises(SecAggRejected, match="checksum"):
        r.server.receive(c, bytes(flipped))
    assert r.server.received() == ()
    r.server.receive(c, good)
    with pytest.raises(SecAggRejected, match="second message"):
        r.server.receive(c, good)
    for other in r.server.expected():
        if other != c:
            r.server.receive(
                other, r.clients[other].masked_input(r.server.message_for(other), r.inputs[other])
            )
    r.server.close_stage()
    r.unmask()
    assert np.array_equal(r.server.result(), expected_sum(r.params, r.inputs, r.params.clients))


def test_out_of_order_foreign_round_wrong_sender_and_outsiders_are_rejected() -> None:
    r = Round(n=4)
    a, b = r.params.clients[:2]
    keys_a = r.clients[a].advertise_keys()
    f = decode_frame(keys_a)
    cases = {
        "SHARE message in the advertise stage": encode_frame(
            Stage.SHARE, f.round, a, SERVER, bytes(f.body)
        ),
        "round 8": encode_frame(Stage.ADVERTISE, 8, a, SERVER, bytes(f.body)),
        f"from {b}": encode_frame(Stage.ADVERTISE, f.round, b, SERVER, bytes(f.body)),
        "bad magic": b"XXXX" + keys_a[4:],
    }
    for match, payload in cases.items():
        with pytest.raises(SecAggRejected, match=match) as info:
            r.server.receive(a, payload)
        assert info.value.client_id == a
    with pytest.raises(SecAggRejected, match="cohort"):
        r.server.receive(999, keys_a)
    with pytest.raises(SecAggRejected, match="public key of client"):
        r.server.receive(a, keys_a)
        r.server.receive(b, encode_frame(Stage.ADVERTISE, f.round, b, SERVER, bytes(f.body)))
    assert r.server.received() == (a,)
    assert isinstance(SecAggRejected(1, "x"), ProtocolError)


def test_client_calls_out_of_order_or_twice_raise() -> None:
    r = Round(n=4)
    c = r.params.clients[0]
    client = r.clients[c]
    with pytest.raises(SecAggError, match="out of order"):
        client.share_keys(b"")
    client.advertise_keys()
    with pytest.raises(SecAggError, match="out of order"):
        client.advertise_keys()
    with pytest.raises(SecAggError, match="out of order"):
        client.unmask(b"")
    with pytest.raises(SecAggError, match="not in round"):
        SecAggClient(12345, r.params)


def _unmask_request(r: Round, c: int, survivors, dropped, everyone=None) -> bytes:
    """A (possibly lying) unmask request: the neighbours to reveal shares of, and the
    round's declared survivors (default: the server's real ones)."""
    genuine = r.server.message_for(c)
    declared = r.server.survivors if everyone is None else everyone
    return reframe(genuine, pack_ids(sorted(survivors), sorted(dropped), sorted(declared)))


def test_client_refuses_to_reveal_both_shares_of_one_peer() -> None:
    r = Round(n=6)  # k = 5, t = 3
    r.advertise()
    r.share()
    r.mask()
    c = r.params.clients[0]
    peers = list(r.params.neighbours(c))
    client = r.clients[c]
    lying = _unmask_request(r, c, peers, [peers[0]])
    with pytest.raises(SecAggError, match="both survivor and dropped"):
        client.unmask(lying)
    assert client.stage == ClientStage.MASKED and client.revealed == {}
    # a peer claimed dropped here: the client reveals its mask-key share only
    declared = [x for x in r.server.survivors if x != peers[0]]
    reply = client.unmask(_unmask_request(r, c, peers[1:], peers[:1], declared))
    from fedpeft.privacy.secagg.messages import MASK_SEED, SELF_SEED, unpack_entries

    rows = unpack_entries(UNMASK_ENTRY, decode_frame(reply).body, "shares")
    kinds = {owner: kind for owner, kind, _ in rows}
    assert kinds[peers[0]] == MASK_SEED
    assert all(kinds[p] == SELF_SEED for p in peers[1:])
    assert len(rows) == len(peers)  # one share per peer, never two
    with pytest.raises(SecAggError, match="out of order"):
        client.unmask(_unmask_request(r, c, peers[:1], peers[1:]))


def test_client_refuses_when_fewer_than_threshold_neighbours_survived() -> None:
    r = Round(n=6)
    r.advertise()
    r.share()
    r.mask()
    c = r.params.clients[0]
    peers = list(r.params.neighbours(c))
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        r.clients[c].unmask(_unmask_request(r, c, peers[:2], peers[2:]))
    with pytest.raises(SecAggError, match="holds no shares"):
        r.clients[c].unmask(_unmask_request(r, c, [*peers, c], []))


def test_client_refuses_to_unmask_below_the_survivor_floor_or_when_left_out() -> None:
    """Distributed DP's n_min is in the parameters: a coordinator that declares fewer
    survivors (so that less noise than accounted reaches the sum), that leaves the asked
    client out, or whose neighbour lists contradict its declared survivors gets nothing."""
    r = Round(n=10, dropout_fraction=0.0, min_survivors=10)  # complete graph, k 9, t 5
    assert SecAggParams.from_bytes(r.params.to_bytes()).min_survivors == 10
    r.advertise()
    r.share()
    r.mask()
    c = r.params.clients[0]
    peers = list(r.params.neighbours(c))
    client = r.clients[c]
    # nine declared survivors complete the protocol (t + 1 = 6) but carry too little noise
    short = [x for x in r.params.clients if x != peers[-1]]
    with pytest.raises(SecAggError, match="fewer than the 10"):
        client.unmask(_unmask_request(r, c, peers[:-1], peers[-1:], short))
    with pytest.raises(SecAggError, match="leave this client out"):
        client.unmask(_unmask_request(r, c, peers, [], peers))
    with pytest.raises(SecAggError, match="contradict"):
        client.unmask(_unmask_request(r, c, peers[:-1], peers[-1:]))
    assert client.stage == ClientStage.MASKED and client.revealed == {}
    client.unmask(_unmask_request(r, c, peers, []))  # the honest request is answered
    assert client.stage == ClientStage.DONE


def test_server_aborts_below_the_survivor_floor() -> None:
    r = Round(n=10, dropout_fraction=0.0, min_survivors=10)
    r.advertise()
    r.share()
    with pytest.raises(SecAggAborted, match="fewer than the 10 survivors"):
        r.mask(skip=[r.params.clients[3]])


def test_forged_unmask_share_never_gives_a_wrong_sum() -> None:
    """One client returns a corrupted share: with t+1 shares the server finds a subset
    that matches the owner's commitment, so the sum is still exact."""
    r = Round(n=6)
    r.advertise()
    r.share()
    r.mask()
    bad = r.params.clients[1]
    for c in r.server.expected():
        reply = r.clients[c].unmask(r.server.message_for(c))
        if c == bad:
            from fedpeft.privacy.secagg.messages import unpack_entries

            rows = [list(x) for x in unpack_entries(UNMASK_ENTRY, decode_frame(reply).body, "s")]
            rows[0][2] = bytes(b ^ 0x5A for b in rows[0][2])
            reply = reframe(reply, pack_entries(UNMASK_ENTRY, [tuple(x) for x in rows]))
        r.server.receive(c, reply)
    r.server.close_stage()
    assert np.array_equal(r.server.result(), expected_sum(r.params, r.inputs, r.params.clients))


def test_unmask_reply_with_unrequested_shares_is_rejected() -> None:
    r = Round(n=5)
    r.advertise()
    r.share()
    r.mask()
    c = r.params.clients[0]
    reply = r.clients[c].unmask(r.server.message_for(c))
    from fedpeft.privacy.secagg.messages import MASK_SEED, unpack_entries

    rows = unpack_entries(UNMASK_ENTRY, decode_frame(reply).body, "s")
    owner = rows[0][0]
    both = [*rows, (owner, MASK_SEED, rows[0][2])]  # a mask-key share of a survivor
    with pytest.raises(SecAggRejected, match="not asked for") as info:
        r.server.receive(c, reframe(reply, pack_entries(UNMASK_ENTRY, both)))
    assert info.value.client_id == c
    r.server.receive(c, reply)


def test_params_round_trip_and_validation() -> None:
    params = plan_secagg([5, 3, 9, 1], length=10, bits=20, round_num=4, seed=2)
    assert params.clients == (1, 3, 5, 9)
    assert SecAggParams.from_bytes(params.to_bytes()) == params
    with pytest.raises(ProtocolError):
        SecAggParams.from_bytes(params.to_bytes()[:-1])
    bad = {
        "secagg.degree": dict(degree=4),
        "secagg.threshold": dict(threshold=0),
        "secagg.bits": dict(bits=63),
        "secagg.length": dict(length=0),
        "secagg.clients": dict(clients=(3, 1, 5, 9)),
    }
    fields = dict(
        round=1, clients=(1, 3, 5, 9), threshold=2, degree=3, bits=8, length=4, graph_seed=0
    )
    for name, change in bad.items():
        with pytest.raises(ConfigError, match=name):
            SecAggParams(**{**fields, **change})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"secagg\.min_survivors"):
        SecAggParams(**{**fields, "min_survivors": 5})  # type: ignore[arg-type]
    # two clients would each learn the other's update from the sum
    with pytest.raises(ConfigError, match=r"secagg\.clients.*at least 3"):
        SecAggParams(**{**fields, "clients": (1, 3), "degree": 1, "threshold": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"secagg\.clients"):
        plan_secagg([1, 2], length=1, bits=8, round_num=0, seed=0)
    # an odd degree below the complete graph (antipodal edges) is refused by every client
    many = tuple(range(20))
    with pytest.raises(ConfigError, match=r"secagg\.degree.*odd"):
        SecAggParams(**{**fields, "clients": many, "degree": 9, "threshold": 5})  # type: ignore[arg-type]
    SecAggParams(**{**fields, "clients": many[:10], "degree": 9, "threshold": 5})  # type: ignore[arg-type]


# -- docs/secagg.md reads its figures from the bench results -------------------

ROOT = Path(__file__).resolve().parents[2]


def _bench_module():
    spec = importlib.util.spec_from_file_location("secagg_scale", ROOT / "bench/secagg_scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["secagg_scale.json", "secagg_scale_sparse.json"])
def test_docs_tables_are_the_bench_results(name: str) -> None:
    report = json.loads((ROOT / "bench/results" / name).read_text())
    page = (ROOT / "docs/secagg.md").read_text()
    assert _bench_module().markdown_table(report) in page
    assert all(case["sum_exact"] for case in report["cases"])


def test_docs_byte_figures_are_the_bench_results() -> None:
    report = json.loads((ROOT / "bench/results/secagg_scale.json").read_text())
    case = next(
        c
        for c in report["cases"]
        if c["dropout_when"] == "after_masking" and c["dropout_rate"] == 0.3
    )
    stage_bytes = case["server_bytes_per_stage_in_out"]
    n, responders = case["clients"], case["clients"] - case["dropped"]
    vector = stage_bytes["mask"][0] // n
    others = (
        stage_bytes["advertise"][0] // n
        + stage_bytes["share"][0] // n
        + stage_bytes["unmask"][0] // responders
    )
    page = (ROOT / "docs/secagg.md").read_text()
    assert f"the masked vector is {vector:,} bytes" in page
    assert f"against {case['dense_fp32_bytes']:,} for the same coordinates" in page
    assert f"add {others:,} bytes up" in page
    # the planning statements of the page
    plan = functools.partial(plan_secagg, length=1, bits=8, round_num=0, seed=0)
    assert plan(range(190), dropout_fraction=0.3).degree == 189
    assert plan(range(200), dropout_fraction=0.3).degree < 199
    assert plan(range(100), dropout_fraction=0.1).degree < 99
    with pytest.raises(ConfigError, match=r"secagg\.dropout_fraction"):
        plan(range(10), dropout_fraction=0.5)


def test_a_million_coordinates_of_mask_expand_in_well_under_a_tenth_of_a_second() -> None:
    import time

    from fedpeft.privacy.secagg import crypto

    for dtype in (np.uint32, np.uint64):
        acc = np.zeros(1_000_000, dtype)
        crypto.add_mask(acc, bytes(32), +1)  # warm the buffers
        start = time.process_time()
        for i in range(5):
            crypto.add_mask(acc, bytes([i]) * 32, +1 if i % 2 else -1)
        per_mask = (time.process_time() - start) / 5
        assert per_mask < 0.05, (dtype, per_mask)  # CPU time: the machine's load does not count
    # the key stream differs per key and looks uniform
    a = np.zeros(1000, np.uint64)
    b = np.zeros(1000, np.uint64)
    crypto.add_mask(a, bytes(32), +1)
    crypto.add_mask(b, bytes([1]) * 32, +1)
    assert not np.array_equal(a, b) and len(np.unique(a)) == 1000


def test_docs_flower_figures_are_the_bench_results() -> None:
    report = json.loads((ROOT / "bench/results/secagg_vs_flower.json").read_text())

    def best(side: str, key: str = "round_seconds") -> float:
        return min(r[key] for r in report["runs"] if r["side"] == side)

    fed, secagg, plain = best("fedpeft"), best("flower-secagg"), best("flower-plain")
    page = (ROOT / "docs/secagg.md").read_text()
    assert f"({best('fedpeft', 'round_cpu_seconds'):.2f} s CPU) | {fed:.2f} |" in page
    assert f"| Flower SecAgg+ round | {secagg:.1f} |" in page
    assert f"no SecAgg+) | {plain:.1f} |" in page
    assert f"adds\n{secagg - plain:.1f} s to it" in page
    assert f"So the {secagg / fed:.0f}x between" in page
    worst = max(r["abs_error_of_mean"] for r in report["runs"] if r["side"] == "flower-secagg")
    assert f"off by {worst / 1e-3:.1%} of the" in page
