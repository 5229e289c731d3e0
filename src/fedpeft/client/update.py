"""A client's update on its way to the wire, in one pass: error feedback, the mods (the
non-finite check, the DP clip), then the encoding — the uplink codec, or under secure
aggregation the public integer encoding and the masked input — and what the encoding
dropped kept as the next round's residual. Every client app (LoRA, Offsite-Tuning, the
test apps) sends through :class:`UpdateSender`.

**Under secure aggregation nothing about one client travels in the clear.** The learning
report (loss, local steps, examples, clipped coordinates) rides inside the masked vector
(:class:`~fedpeft.privacy.secagg.updates.SecureEncoding` ``metrics``), so the coordinator
learns cohort totals only; :meth:`UpdateSender.clear_metrics` sends nothing else — no
timings (a client's training time tracks its example count), no prefix-cache hit rate, no
clip share — and the cheap stages report no timing either. Classifier-calibration
statistics go through the same masked sum (:meth:`UpdateSender.masked_stats`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedpeft.client.mods import ModContext, UpdateMod, apply_mods, clip_mod
from fedpeft.client.secure import SecureClient
from fedpeft.compression import Codec
from fedpeft.compression.feedback import add_residual, residual_of
from fedpeft.config import CodecSettings
from fedpeft.errors import FedPeftError, ProtocolError
from fedpeft.privacy.secagg.updates import (
    SecureEncoding,
    StatsEncoding,
    encode_secure,
    encode_stats,
    unflatten,
)
from fedpeft.protocol.messages import Tensors, TrainResult, TrainTask

#: What a client reports as "this client failed" (and the engine drops it): our own
#: errors (bad data, bad bytes, a refused protocol message), bad values, and torch's
#: runtime failures (out of memory, a diverged step). Anything else — TypeError,
#: AttributeError, KeyError — is a bug and propagates.
CLIENT_ERRORS = (FedPeftError, ValueError, RuntimeError, MemoryError)

#: What a client's own clip mod reports; under secure aggregation or DP it stays on the
#: client (a client's norm would tell the coordinator about its update, unnoised).
NORM_INFO = ("update_norm", "clip_factor", "dp_clipped")

log = logging.getLogger(__name__)


class UpdateSender:
    """A client's update → bytes on the wire, and the cheap SecAgg+ stages."""

    def __init__(self, uplink: Codec, mods: list[UpdateMod], codec: CodecSettings) -> None:
        self.uplink = uplink
        self.mods = mods
        self.codec = codec
        self.secure = SecureClient()

    def encode(
        self,
        task: TrainTask,
        delta: Tensors,
        ctx: ModContext,
        report: Mapping[str, float] | None = None,
    ) -> bytes:
        """Order matters for DP: the error-feedback residual is added first, then the mods
        (non-finite check, the DP clip), so the clip bounds exactly what is sent; what the
        encoding drops becomes the next residual (in ``ctx.state``). ``report``: the
        client's ``train_loss`` and ``train_steps``, masked into the vector under secure
        aggregation."""
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
            return self._masked_input(task, delta, enc, ctx, feedback, report or {})
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
        report: Mapping[str, float],
    ) -> bytes:
        for key in NORM_INFO:
            ctx.info.pop(key, None)
        # stochastic rounding and DP noise: fresh entropy, never the run seed (a seeded
        # noise draw could be replayed by anyone who knows the seed)
        rng = np.random.default_rng()
        shapes = {k: v.shape for k, v in delta.items()}
        vector, residual, info = encode_secure(delta, enc, ctx.num_examples, rng, report)
        # the clip share stays in this client's log; the cohort's total travels masked
        log.debug("client %s round %s: %s", task.client_id, task.round, info)
        if feedback:
            ctx.state.residual = None if residual is None else unflatten(residual, enc, shapes)
        return self.secure.masked_input(task, vector)

    @staticmethod
    def clear_metrics(task: TrainTask, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """What of ``metrics`` a result may carry in the clear: everything in a plain round;
        nothing under secure aggregation (the learning report is inside the masked vector,
        and a client's timings, cache hits or clip share would describe its data)."""
        return {} if task.secagg else dict(metrics)

    def masked_stats(
        self, task: TrainTask, module: str, features: np.ndarray, labels: np.ndarray
    ) -> bytes:
        """Classifier-calibration statistics of the features entering ``module`` as this
        client's masked input of a secure round
        (:class:`~fedpeft.privacy.secagg.updates.StatsEncoding`): only sums, which the
        coordinator sees added over the cohort."""
        if task.settings.secagg_encoding is None:
            raise ProtocolError("masked statistics asked without their secagg_encoding")
        enc = StatsEncoding.from_dict(task.settings.secagg_encoding)
        if enc.module != module:
            raise ProtocolError(
                f"statistics asked for `{enc.module}`; the output layer is `{module}`"
            )
        return self.secure.masked_input(task, encode_stats(features, labels, enc))

    def stage(self, task: TrainTask, worker: str = "") -> TrainResult:
        """A cheap protocol stage: keys, shares, unmask — no model, no data touched, and
        no timing reported."""
        try:
            payload = self.secure.stage(task)
        except CLIENT_ERRORS as exc:
            return TrainResult(
                task.round, task.client_id, error=f"{type(exc).__name__}: {exc}", worker=worker
            )
        return TrainResult(task.round, task.client_id, payload=payload, worker=worker)
