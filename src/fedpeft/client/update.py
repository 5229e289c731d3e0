"""A client's update on its way to the wire, in one pass: error feedback, the mods (the
non-finite check, the DP clip), then the encoding — the uplink codec, or under secure
aggregation the public integer encoding and the masked input — and what the encoding
dropped kept as the next round's residual. Every client app (LoRA, Offsite-Tuning, the
test apps) sends through :class:`UpdateSender`.
"""

from __future__ import annotations

import time

import numpy as np

from fedpeft.client.mods import ModContext, UpdateMod, apply_mods, clip_mod
from fedpeft.client.secure import SecureClient
from fedpeft.compression import Codec
from fedpeft.compression.feedback import add_residual, residual_of
from fedpeft.config import CodecSettings
from fedpeft.errors import FedPeftError, ProtocolError
from fedpeft.privacy.secagg.updates import SecureEncoding, encode_secure, unflatten
from fedpeft.protocol.messages import Tensors, TrainResult, TrainTask

#: What a client reports as "this client failed" (and the engine drops it): our own
#: errors (bad data, bad bytes, a refused protocol message), bad values, and torch's
#: runtime failures (out of memory, a diverged step). Anything else — TypeError,
#: AttributeError, KeyError — is a bug and propagates.
CLIENT_ERRORS = (FedPeftError, ValueError, RuntimeError, MemoryError)

#: What a client's own clip mod reports; under secure aggregation or DP it stays on the
#: client (a client's norm would tell the coordinator about its update, unnoised).
NORM_INFO = ("update_norm", "clip_factor", "dp_clipped")


class UpdateSender:
    """A client's update → bytes on the wire, and the cheap SecAgg+ stages."""

    def __init__(self, uplink: Codec, mods: list[UpdateMod], codec: CodecSettings) -> None:
        self.uplink = uplink
        self.mods = mods
        self.codec = codec
        self.secure = SecureClient()

    def encode(self, task: TrainTask, delta: Tensors, ctx: ModContext) -> bytes:
        """Order matters for DP: the error-feedback residual is added first, then the mods
        (non-finite check, the DP clip), so the clip bounds exactly what is sent; what the
        encoding drops becomes the next residual (in ``ctx.state``)."""
        enc = self._secure_encoding(task)
        # a shared SecAgg subset always carries what it skipped
        feedback = self.codec.error_feedback or (enc is not None and enc.density < 1.0)
        if feedback and ctx.state.residual is not None:
            delta = add_residual(delta, ctx.state.residual, self.codec.feedback_decay)
        mods = list(self.mods)
        if task.settings.dp_clip is not None:
            mods.append(clip_mod(task.settings.dp_clip))
        delta = apply_mods(mods, delta, ctx)
        if task.settings.dp_clip is not None:
            # under DP a client's norm would be released in the clear, neither noised
            # nor accounted: it stays here
            for key in NORM_INFO:
                ctx.info.pop(key, None)
        if enc is not None:
            return self._masked_input(task, delta, enc, ctx, feedback)
        payload = self.uplink.encode(delta)
        if feedback:
            ctx.state.residual = residual_of(delta, self.uplink.reconstruct(delta))
        return payload

    @staticmethod
    def _secure_encoding(task: TrainTask) -> SecureEncoding | None:
        """The round's public encoding on a masked-input task (None: not secure)."""
        if not task.secagg:
            return None
        if task.settings.secagg_encoding is None:
            raise ProtocolError("a masked-input task without its secagg_encoding")
        return SecureEncoding.from_dict(task.settings.secagg_encoding)

    def _masked_input(
        self,
        task: TrainTask,
        delta: Tensors,
        enc: SecureEncoding,
        ctx: ModContext,
        feedback: bool,
    ) -> bytes:
        for key in NORM_INFO:
            ctx.info.pop(key, None)
        # stochastic rounding and DP noise: fresh entropy, never the run seed (a seeded
        # noise draw could be replayed by anyone who knows the seed)
        rng = np.random.default_rng()
        shapes = {k: v.shape for k, v in delta.items()}
        vector, residual, info = encode_secure(delta, enc, ctx.num_examples, rng)
        ctx.info.update(info)
        if feedback:
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
