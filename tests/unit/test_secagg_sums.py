"""Under secure aggregation nothing about one client reaches the coordinator in the clear:
the learning report and the classifier-calibration statistics travel as masked sums, and
a decoded sum no honest cohort could produce fails the round.

Each test names the mutation it catches. The adversaries are written into the tests: a
client that sends an out-of-range masked vector (value, weight or metric digits), one
that stays inside each coordinate's range but breaks the L2 bound of a clipped cohort,
and one that sends implausible calibration statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import NumpyClientApp, engine_for, secure_round
from conftest import engine_job as job
from fedpeft.aggregation import calibration as ccvr
from fedpeft.client.mods import ModContext
from fedpeft.compression import FULL_WEIGHTS_CODEC
from fedpeft.coordinator.calibrate import Calibrator, output_module
from fedpeft.errors import CodecError, ProtocolError
from fedpeft.privacy.secagg.encoding import from_field, to_field
from fedpeft.privacy.secagg.updates import (
    SecureEncoding,
    StatsEncoding,
    decode_secure_sum,
    decode_stats_sum,
    encode_secure,
    encode_stats,
)
from fedpeft.protocol.codecs import apply_downlink, downlink_codec
from fedpeft.protocol.messages import ClientState, TrainResult, TrainTask

HEAD = "base_model.model.classifier.modules_to_save.default"
FEATURES = 5


class ReportingApp(NumpyClientApp):
    """NumpyClientApp with a per-client learning report and CCVR statistics, sent the way
    :class:`fedpeft.client.app.LoraClientApp` sends them (through the real sender)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.SHAPES = {
            "lora_A": (4, 6),
            "lora_B": (6, 4),
            f"{HEAD}.weight": (2, FEATURES),
            f"{HEAD}.bias": (2,),
        }

    @staticmethod
    def loss_of(cid: int) -> float:
        return 0.25 + 0.1 * cid

    @staticmethod
    def steps_of(cid: int) -> int:
        return 2 + cid

    def features_of(self, cid: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([11, cid])
        y = (np.arange(n) + cid) % 2
        centres = np.array([[1.0, -0.5, 0.2, 0.0, 0.3], [-0.8, 0.6, 0.1, 0.4, -0.2]])
        return centres[y] + 0.3 * rng.standard_normal((n, FEATURES)), y

    def train(self, task: TrainTask) -> TrainResult:
        if task.kind.startswith("secagg_"):
            return self.sender.stage(task, self.name)
        n = len(task.indices) if task.indices is not None else self.num_examples(task.client_id)
        if task.kind == "feature_stats":
            x, y = self.features_of(task.client_id, n)
            if task.secagg:
                payload = self.sender.masked_stats(task, HEAD, x, y)
            else:
                payload = FULL_WEIGHTS_CODEC.encode(ccvr.feature_stats(HEAD, x, y, 2))
            return TrainResult(
                task.round,
                task.client_id,
                num_examples=0 if task.secagg else n,
                payload=payload,
                metrics=self.sender.clear_metrics(task, {"client_seconds": 0.1}),
            )
        apply_downlink(downlink_codec(self.cfg.codec), task, self.initial_state())
        delta = self.update_of(task.client_id)
        state = ClientState(version=task.version, residual=task.state.residual)
        ctx = ModContext(task.client_id, task.round, n, state)
        report = {
            "train_loss": self.loss_of(task.client_id),
            "train_steps": float(self.steps_of(task.client_id)),
        }
        payload = self.sender.encode(task, delta, ctx, report)
        metrics = {**report, "train_seconds": 0.01 * n, "client_seconds": 0.02 * n, **ctx.info}
        return TrainResult(
            task.round,
            task.client_id,
            num_examples=0 if task.secagg else n,
            payload=payload,
            metrics=self.sender.clear_metrics(task, metrics),
            state=state,
            worker=self.name,
        )


def _cohort(spy: Any) -> list[int]:
    return sorted({t.client_id for t in spy.tasks if t.kind == "train"})


def test_a_secure_round_sends_nothing_per_client_in_the_clear_and_records_cohort_means(
    tmp_path: Path,
) -> None:
    """Every result that crosses the backend (protocol stages and masked inputs) carries
    no metric and no example count; the line's loss, steps and examples are the cohort's,
    decoded from the sum, equal to a plain round's example-weighted loss. Mutations
    caught: ``clear_metrics`` passing metrics through (timings and loss in the clear);
    the metric digits left out of the decoded sum (no loss in the line)."""
    # Prepare
    app = ReportingApp(job(tmp_path / "s"))
    engine, spy = engine_for(app.cfg, app, secure=secure_round())
    plain_app = ReportingApp(job(tmp_path / "p"))
    plain, plain_spy = engine_for(plain_app.cfg, plain_app, secure=None)
    # Execute
    record = engine.run_round(1)
    plain_record = plain.run_round(1)
    # Assert: the coordinator's whole view holds no per-client number
    assert spy.results and all(r.metrics == {} and r.num_examples == 0 for r in spy.results)
    assert "client_metrics_dropped" not in record
    cohort = _cohort(spy)
    n = {c: app.num_examples(c) for c in cohort}
    want_loss = sum(app.loss_of(c) * n[c] for c in cohort) / sum(n.values())
    assert record["train_loss"] == pytest.approx(want_loss, abs=1e-3)
    assert record["train_steps"] == pytest.approx(np.mean([app.steps_of(c) for c in cohort]))
    assert record["train_examples"] == sum(n.values())
    assert record["secagg_clipped_fraction"] == 0.0
    for key in ("train_seconds", "client_seconds", "overhead_seconds", "prefix_hit_rate"):
        assert key not in record
    # the same example-weighted loss a plain round records from the clear reports
    assert _cohort(plain_spy) == cohort
    assert plain_record["train_loss"] == pytest.approx(record["train_loss"], abs=1e-3)


class _Hostile:
    """Wraps a client's SecureClient: the first masked input of each round is shifted by
    ``shift`` (a function of the encoded vector) before masking — a client free to send
    any vector mod 2^bits."""

    def __init__(self, inner: Any, shift: Any) -> None:
        self.inner = inner
        self.shift = shift
        self.rounds: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def masked_input(self, task: TrainTask, vector: np.ndarray) -> bytes:
        if task.round not in self.rounds:
            self.rounds.add(task.round)
            enc = task.settings.secagg_encoding or {}
            bits = int(enc["bits"])
            ints = from_field(vector, bits)
            vector = to_field(self.shift(ints, enc), bits)
        return self.inner.masked_input(task, vector)


def _value_shift(ints: np.ndarray, enc: dict[str, Any]) -> np.ndarray:
    out = ints.copy()
    out[0] += 9 * int(enc["levels"])  # beyond the six clients' reach (6 levels), in the field
    return out


def _weight_shift(ints: np.ndarray, enc: dict[str, Any]) -> np.ndarray:
    out = ints.copy()
    sent = SecureEncoding.from_dict(enc).sent
    out[sent] += 10**6  # a weight far beyond the cap: the round's mean shrinks to nothing
    return out


def _loss_shift(ints: np.ndarray, enc: dict[str, Any]) -> np.ndarray:
    e = SecureEncoding.from_dict(enc)
    out = ints.copy()
    digits = e.metric_digits()
    loss_at = e.sent + e.weight_digits + digits["examples"] + digits["loss_sum"] - 1
    out[loss_at] += 6 * e.levels  # the top digit of the loss total, beyond any cohort's
    return out


@pytest.mark.parametrize(
    ("shift", "reason"),
    [(_value_shift, "value coordinate"), (_weight_shift, "weights total"), (_loss_shift, "digit")],
)
def test_a_hostile_clients_out_of_range_vector_fails_the_round(
    tmp_path: Path, shift: Any, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client adds to its encoded vector before masking (the field hides it from the
    coordinator): the decoded sum is outside what six honest clients can produce, the
    round fails with the reason and the adapter is unchanged. Mutation caught:
    ``check_plausible`` made a no-op — the second half runs exactly that and shows the
    shift reaching the adapter (or the line's loss)."""
    import fedpeft.privacy.secagg.updates as updates

    def hostile_run(check: bool) -> tuple[dict[str, Any], Any]:
        cfg = job(tmp_path / f"run-{check}")
        app = ReportingApp(cfg)
        app.sender.secure = _Hostile(app.sender.secure, shift)  # type: ignore[assignment]
        engine, _ = engine_for(cfg, app, secure=secure_round())
        return engine.run_round(1), engine

    before = {k: np.zeros(s, np.float32) for k, s in ReportingApp(job(tmp_path)).SHAPES.items()}
    record, engine = hostile_run(check=True)
    assert "implausible sum" in record["round_failed"] and reason in record["round_failed"]
    for k, v in engine.state.params.items():
        np.testing.assert_array_equal(v, before[k])
    # the adversary is real: without the check its shift is decoded into the round
    monkeypatch.setattr(updates, "check_plausible", lambda *_a, **_k: None)
    record, engine = hostile_run(check=False)
    if shift is _value_shift:
        assert "round_failed" not in record
        assert float(np.abs(engine.state.params["lora_A"]).max()) > 0.5  # honest: ~0.03
    elif shift is _loss_shift:
        assert record["train_loss"] > 1000  # honest: < 1.1
    else:  # the mean divided by an inflated weight: the round's update vanishes
        assert "round_failed" not in record
        assert float(np.abs(engine.state.params["lora_A"]).max()) < 1e-4  # honest: ~0.03


def _dp_encoding(levels: int, dim: int, l2_clip: float, sigma: float = 0.0) -> SecureEncoding:
    return SecureEncoding(
        names=("w",),
        sizes=(dim,),
        density=1.0,
        subset_seed=0,
        levels=levels,
        clip_range=1.0,
        weight_cap=1,
        bits=40,
        uniform_weights=True,
        with_sq_norm=False,
        noise_sigma=sigma,
        metrics=True,
        examples_cap=100,
        l2_clip=l2_clip,
    )


def _field_sum(enc: SecureEncoding, vectors: list[np.ndarray]) -> np.ndarray:
    total = np.zeros(enc.length, np.uint64)
    for v in vectors:
        total = (total + v) & np.uint64((1 << enc.bits) - 1)
    return total


@pytest.mark.parametrize("sigma", [0.0, 3.0])
def test_a_vector_inside_each_coordinates_range_but_beyond_the_clip_norm_is_refused(
    sigma: float,
) -> None:
    """Clients clip their update to L2 ≤ 1 (DP): five honest clients and one that puts
    every coordinate at the per-coordinate edge (each coordinate in range, its norm √d
    times the clip). The sum's L2 norm gives it away, with and without noise. Mutation
    caught: the L2 bound removed from ``check_plausible``."""
    rng = np.random.default_rng(0)
    dim, levels = 400, 1000
    enc = _dp_encoding(levels, dim, l2_clip=1.0, sigma=sigma)
    honest = []
    for _ in range(5):
        u = rng.standard_normal(dim)
        u *= 0.9 / np.linalg.norm(u)
        honest.append(encode_secure({"w": u}, enc, 10, rng, {"train_loss": 0.5})[0])
    edge = np.full(dim, 1.0)  # |coordinate| ≤ clip_range: in range, norm 20 ≫ 1
    hostile = encode_secure({"w": edge}, enc, 10, rng, {"train_loss": 0.5})[0]
    decoded = decode_secure_sum(_field_sum(enc, [*honest, honest[0]]), enc, {"w": (dim,)}, 6)
    assert decoded.total_weight == 6  # six honest inputs pass
    with pytest.raises(ProtocolError, match="L2 norm"):
        decode_secure_sum(_field_sum(enc, [*honest, hostile]), enc, {"w": (dim,)}, clients=6)


@pytest.fixture
def one_torch_thread() -> Any:
    """The head's refit is hundreds of tiny torch steps: one thread is several times
    faster than a pool on a shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _stats_setup(tmp_path: Path) -> tuple[ReportingApp, Any, Any, Any]:
    cfg = job(tmp_path, **{"federation.clients_per_round": 6})
    app = ReportingApp(cfg)
    engine, spy = engine_for(cfg, app, secure=secure_round())
    return app, engine, spy, secure_round()


def test_calibration_through_secagg_equals_the_plain_calibration(
    tmp_path: Path, one_torch_thread: None
) -> None:
    """CCVR's statistics through a secure round: the coordinator sees only masked vectors
    (no result decodes as tensors, none carries a count or a metric), and the pooled
    count, mean and covariance — and so the refitted head — equal the plain path's, up
    to the fixed point. Mutations caught: ``masked_stats`` sending the plain statistics;
    the pooled scatter without the −N·μμᵀ term."""
    # Prepare
    _, engine, spy, secure = _stats_setup(tmp_path / "s")
    base = {k: v.copy() for k, v in engine.state.params.items()}
    base[f"{HEAD}.weight"] = np.array([[1.0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0]], np.float32)
    base[f"{HEAD}.bias"] = np.array([0.0, 3.0], np.float32)
    shards = engine.shards
    # Execute
    secure_out = Calibrator(0, seed=0, collection=secure).run(spy, 1, base, engine.shapes, shards)
    _, plain_engine, plain_spy, _ = _stats_setup(tmp_path / "p")
    plain_out = Calibrator(0, seed=0).run(plain_spy, 1, base, plain_engine.shapes, shards)
    # Assert: what crossed to the coordinator under SecAgg
    stats_results = [r for r in spy.results if r.payload and not r.error]
    assert stats_results and all(r.metrics == {} and r.num_examples == 0 for r in spy.results)
    for result in stats_results:
        with pytest.raises(CodecError):
            FULL_WEIGHTS_CODEC.decode(result.payload)
    assert secure_out.record["calibration_clients"] == plain_out.record["calibration_clients"]
    assert secure_out.record["calibration_clipped_fraction"] == 0.0
    # the pooled statistics agree
    want = ccvr.merge_feature_stats(plain_out.stats, HEAD)
    got = ccvr.merge_feature_stats(secure_out.stats, HEAD)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-6)
    np.testing.assert_allclose(got[2], want[2], atol=1e-5)
    # and so does the calibrated head
    assert secure_out.tensors is not None and plain_out.tensors is not None
    for key, value in plain_out.tensors.items():
        np.testing.assert_allclose(secure_out.tensors[key], value, atol=1e-3)


def test_implausible_calibration_statistics_leave_the_head_as_trained(tmp_path: Path) -> None:
    """A client claims 500 more examples of class 0 than eight clients of at most 64 can
    hold (a vote for its class in the refit): the pooled sum is refused, calibration
    fails with the reason, no head is refitted. Mutation caught: the count check removed
    from the statistics' envelope."""
    app, engine, spy, secure = _stats_setup(tmp_path)
    app.sender.secure = _Hostile(  # type: ignore[assignment]
        app.sender.secure, lambda ints, _enc: ints + np.eye(1, ints.size, 0, np.int64)[0] * 500
    )
    out = Calibrator(0, seed=0, collection=secure).run(
        spy, 1, engine.state.params, engine.shapes, engine.shards
    )
    assert out.tensors is None
    assert "implausible statistics" in out.record["calibration_failed"]


def test_the_stats_envelope_refuses_a_negative_variance() -> None:
    """Sums that pass the count and range checks but whose second moment is below the
    square of the mean (no data has that) are refused. Mutation caught: the
    Cauchy-Schwarz check removed."""
    enc = StatsEncoding.plan("m", 2, 3, cohort=3, examples_cap=50, bits=62)
    rng = np.random.default_rng(0)
    vectors = [encode_stats(rng.standard_normal((20, 3)), np.arange(20) % 2, enc) for _ in range(3)]
    total = _field_sum(enc, vectors)  # type: ignore[arg-type]
    decode_stats_sum(total, enc, clients=3)  # honest: passes
    ints = from_field(total, enc.bits)
    start = enc.classes * (1 + enc.dim)
    ints[start] = 0  # class 0's Σx₀² set to 0 while Σx₀ ≠ 0
    with pytest.raises(ProtocolError, match="variance"):
        decode_stats_sum(to_field(ints, enc.bits), enc, clients=3)


def test_the_output_layer_is_found_by_name_or_the_reason_given() -> None:
    shapes = {
        "base_model.model.bert.pooler.dense.modules_to_save.default.weight": (8, 8),
        f"{HEAD}.weight": (2, 8),
        f"{HEAD}.bias": (2,),
        "lora_A": (4, 8),
    }
    assert output_module(shapes) == (HEAD, (2, 8))
    assert "not one trainable linear layer" in str(output_module({"lora_A": (4, 8)}))
