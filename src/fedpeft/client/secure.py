"""The client's side of secure aggregation: the update encoded as the integer vector
SecAgg+ masks (:mod:`fedpeft.privacy.secagg.updates`), and the protocol's stages.

**Secrets between stages.** A client's SecAgg state (its X25519 private keys, its self-mask
seed, the shares it holds for its neighbours) lives in :attr:`SecureClient.sessions`, an
attribute of the client application object — on a device that is the daemon's memory; in
simulation it is the memory of the worker process that serves the client for the whole
round (the Ray backend pins a client's stages of one round to one worker). The round
engine and the secure-aggregation server only ever receive what the stage methods return:
public keys, AES-GCM ciphertexts, masked vectors and shares. Nothing in
:mod:`fedpeft.coordinator` imports this module.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fedpeft.client.mods import ModContext, UpdateMod, apply_mods, clip_l2, encode_update
from fedpeft.compression import Codec
from fedpeft.compression.feedback import add_residual
from fedpeft.config import CodecSettings
from fedpeft.errors import FedPeftError, ProtocolError
from fedpeft.privacy.secagg.updates import SecureEncoding, encode_secure, unflatten
from fedpeft.protocol.messages import Tensors, TrainResult, TrainTask

#: What a client reports as "this client failed" (and the engine drops it): our own
#: errors (bad data, bad bytes, a refused protocol message), bad values, and torch's
#: runtime failures (out of memory, a diverged step). Anything else — TypeError,
#: AttributeError, KeyError — is a bug and propagates.
CLIENT_ERRORS = (FedPeftError, ValueError, RuntimeError, MemoryError)


class SecureClient:
    """Answers a client's SecAgg+ stages; holds its per-round protocol sessions."""

    def __init__(self) -> None:
        # (round, client_id) -> fedpeft.privacy.secagg.SecAggClient: the client's secrets
        self.sessions: dict[tuple[int, int], Any] = {}

    def session(self, task: TrainTask) -> Any:
        key = (task.round, task.client_id)
        if key not in self.sessions:
            raise ProtocolError(
                f"client {task.client_id} has no secure-aggregation session for round "
                f"{task.round} (its keys were never advertised here)"
            )
        return self.sessions[key]

    def stage(self, task: TrainTask) -> bytes:
        """Answer a cheap stage (keys, shares, unmask): no model, no data."""
        from fedpeft.privacy.secagg import SecAggClient, SecAggParams

        if task.kind == "secagg_advertise":
            # a new round: sessions of earlier rounds are over (dropped or done)
            for key in [k for k in self.sessions if k[1] == task.client_id]:
                del self.sessions[key]
            params = SecAggParams.from_bytes(task.secagg)
            if params.round != task.round or task.client_id not in params.clients:
                raise ProtocolError(
                    f"secure-aggregation parameters for round {params.round} do not name "
                    f"client {task.client_id} in round {task.round}"
                )
            client = SecAggClient(task.client_id, params)
            self.sessions[(task.round, task.client_id)] = client
            return bytes(client.advertise_keys())
        if task.kind == "secagg_share":
            return bytes(self.session(task).share_keys(task.secagg))
        if task.kind == "secagg_unmask":
            try:
                return bytes(self.session(task).unmask(task.secagg))
            finally:
                del self.sessions[(task.round, task.client_id)]  # the round is over for us
        raise ProtocolError(f"unknown secure-aggregation stage {task.kind!r}")

    def masked_input(self, task: TrainTask, vector: np.ndarray) -> bytes:
        return bytes(self.session(task).masked_input(task.secagg, vector))


class UpdateSender:
    """A client's update → bytes on the wire: error feedback, mods (the DP clip), then the
    codec — or, under secure aggregation, the integer encoding and the masked input — and
    the cheap protocol stages. Used by every client app (LoRA, Offsite-Tuning, tests)."""

    def __init__(self, uplink: Codec, mods: list[UpdateMod], codec: CodecSettings) -> None:
        self.uplink = uplink
        self.mods = mods
        self.codec = codec
        self.secure = SecureClient()

    def encode(self, task: TrainTask, delta: Tensors, ctx: ModContext) -> bytes:
        """Order matters for DP: the error-feedback residual is added first, then the mods
        (non-finite check, the DP clip), so the clip bounds exactly what is sent; what the
        encoding drops becomes the next residual."""
        ef = self.codec.error_feedback
        secure = bool(task.secagg)
        enc = None
        if secure:
            if "secagg_encoding" not in task.config:
                raise ProtocolError("a masked-input task without its secagg_encoding")
            enc = SecureEncoding.from_dict(task.config["secagg_encoding"])
            ef = ef or enc.density < 1.0  # a shared subset always carries what it skipped
        if ef and ctx.state.residual is not None:
            delta = add_residual(delta, ctx.state.residual, self.codec.feedback_decay)
        mods = list(self.mods)
        if "dp_clip" in task.config:
            mods.append(clip_l2(float(task.config["dp_clip"])))
        delta = apply_mods(mods, delta, ctx)
        if enc is None:
            return encode_update(self.uplink, delta, ctx, error_feedback=ef, carry=False)
        # a client's own norm would tell the coordinator about its update
        for key in ("update_norm", "clip_factor", "dp_clipped"):
            ctx.info.pop(key, None)
        # stochastic rounding and DP noise: fresh entropy, never the run seed (a seeded
        # noise draw could be replayed by anyone who knows the seed)
        rng = np.random.default_rng()
        shapes = {k: v.shape for k, v in delta.items()}
        vector, residual, info = encode_secure(delta, enc, ctx.num_examples, rng)
        ctx.info.update(info)
        if ef:
            ctx.state.residual = None if residual is None else unflatten(residual, enc, shapes)
        return self.secure.masked_input(task, vector)

    def stage(self, task: TrainTask, worker: str = "") -> TrainResult:
        """A cheap protocol stage: keys, shares, unmask — no model, no data touched."""
        start = time.perf_counter()
        try:
            payload = self.secure.stage(task)
        except CLIENT_ERRORS as exc:
            return TrainResult(
                task.round, task.client_id, error=f"{type(exc).__name__}: {exc}", worker=worker
            )
        return TrainResult(
            task.round,
            task.client_id,
            payload=payload,
            metrics={"client_seconds": time.perf_counter() - start},
            worker=worker,
        )
