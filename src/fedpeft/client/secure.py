"""The client's side of secure aggregation: encode an update as the integer vector that
SecAgg+ masks, and answer the protocol's stages.

**The encoding** (:class:`SecureEncoding`, public, the same for the whole cohort, sent by
the coordinator in ``task.config["secagg_encoding"]``) turns a float update into
``length`` integers mod 2^bits:

1. flatten the adapter tensors in ``names`` order; with ``density < 1`` keep only a
   **shared** seeded coordinate subset (rotating every round) — per-client top-k positions
   cannot survive masking, a subset common to the cohort can; what was not sent stays in
   the client's error-feedback residual;
2. pre-weight: ``x = (w/W)·Δ`` with ``w = min(n_examples, W)`` (``W = weight_cap``), or
   ``w = 1`` under DP (uniform weights bound each client's contribution);
3. clip each coordinate to ``[-clip_range, clip_range]`` and round stochastically onto
   the grid ``clip_range/levels`` (unbiased inside the clip) — integers in
   ``[-levels, levels]``; ``levels`` is chosen by the coordinator so that the cohort's sum
   (plus DP noise headroom) never wraps mod 2^bits;
4. append the extra scalars as base-``levels`` digits (sums of digits carry no error
   because summation is linear): the weight ``w`` exactly, and for FedExP the weighted
   squared norm ``(w/W)·‖Δ‖²``;
5. distributed DP: add discrete Gaussian noise (integers) to the value coordinates.

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

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedpeft.client.mods import ModContext, UpdateMod, apply_mods, clip_l2, encode_update
from fedpeft.compression import Codec
from fedpeft.compression.feedback import add_residual
from fedpeft.config import CodecSettings
from fedpeft.coordinator.messages import Tensors, TrainResult, TrainTask
from fedpeft.errors import FedPeftError, ProtocolError

#: What a client reports as "this client failed" (and the engine drops it): our own
#: errors (bad data, bad bytes, a refused protocol message), bad values, and torch's
#: runtime failures (out of memory, a diverged step). Anything else — TypeError,
#: AttributeError, KeyError — is a bug and propagates.
CLIENT_ERRORS = (FedPeftError, ValueError, RuntimeError, MemoryError)

#: Extra scalar coordinates after the values, in this order, and their digits each.
WEIGHT_DIGITS = 2
SQ_NORM_DIGITS = 3


@dataclass(frozen=True)
class SecureEncoding:
    """The round's public encoding of updates into integers (see the module docstring)."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]  # elements per tensor, in ``names`` order
    density: float  # 1.0: every coordinate; else a shared seeded subset of this fraction
    subset_seed: int  # public, per round
    levels: int  # per-client integer range [-levels, levels]
    clip_range: float
    weight_cap: int
    bits: int
    uniform_weights: bool  # DP: every client weighs 1
    with_sq_norm: bool  # FedExP's spread scalar
    noise_sigma: float = 0.0  # distributed DP: per-client discrete Gaussian std (integer units)

    @property
    def dim(self) -> int:
        return int(sum(self.sizes))

    @property
    def sent(self) -> int:
        """Value coordinates sent per client."""
        return self.dim if self.density >= 1.0 else max(1, math.ceil(self.density * self.dim))

    @property
    def length(self) -> int:
        """Integers in the masked vector: the values, then the weight and FedExP digits."""
        return self.sent + WEIGHT_DIGITS + (SQ_NORM_DIGITS if self.with_sq_norm else 0)

    def subset(self) -> np.ndarray | None:
        """Sorted indices of the shared coordinate subset (None: all coordinates)."""
        if self.density >= 1.0:
            return None
        rng = np.random.default_rng([self.subset_seed, 0x5EC])
        return np.sort(rng.choice(self.dim, size=self.sent, replace=False))

    @property
    def sq_norm_max(self) -> float:
        """Upper end of the squared-norm scalar's range (every sent value at the clip)."""
        return self.sent * self.clip_range**2

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["names"] = list(self.names)
        data["sizes"] = list(self.sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SecureEncoding:
        try:
            return cls(
                names=tuple(str(n) for n in data["names"]),
                sizes=tuple(int(s) for s in data["sizes"]),
                density=float(data["density"]),
                subset_seed=int(data["subset_seed"]),
                levels=int(data["levels"]),
                clip_range=float(data["clip_range"]),
                weight_cap=int(data["weight_cap"]),
                bits=int(data["bits"]),
                uniform_weights=bool(data["uniform_weights"]),
                with_sq_norm=bool(data["with_sq_norm"]),
                noise_sigma=float(data.get("noise_sigma", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed secure-aggregation encoding: {exc}") from exc


def to_digits(value: int, base: int, digits: int) -> list[int]:
    """``value`` (0 <= value < base**digits) as little-endian base-``base`` digits."""
    out = []
    for _ in range(digits):
        value, digit = divmod(value, base)
        out.append(digit)
    return out


def from_digits(digit_sums: np.ndarray, base: int) -> int:
    """Σ_j digit_sums[j]·base^j — the sum of the clients' values, digits summed separately."""
    return int(sum(int(d) * base**j for j, d in enumerate(digit_sums)))


def flatten(tensors: Tensors, names: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([np.asarray(tensors[n], np.float64).ravel() for n in names])


def encode_secure(
    delta: Tensors,
    enc: SecureEncoding,
    num_examples: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
    """The integer vector (uint64 mod 2^bits) of one client's update, the part of the
    update that was not sent (the new error-feedback residual as a flat vector, or None
    when every coordinate was sent) and what the client may report about it."""
    from fedpeft.privacy.secagg import quantize, to_field

    flat = flatten(delta, enc.names)
    idx = enc.subset()
    sent = flat if idx is None else flat[idx]
    residual = None
    if idx is not None:
        residual = flat.copy()
        residual[idx] = 0.0
    w = 1 if enc.uniform_weights else min(int(num_examples), enc.weight_cap)
    scale = 1.0 if enc.uniform_weights else w / enc.weight_cap
    ints, clipped = quantize(sent * scale, clip=enc.clip_range, levels=enc.levels, rng=rng)
    extras = to_digits(w, enc.levels, WEIGHT_DIGITS)
    if enc.with_sq_norm:
        sq = min(scale * float(np.dot(sent, sent)), enc.sq_norm_max)
        top = enc.levels**SQ_NORM_DIGITS - 1
        extras += to_digits(round(sq / enc.sq_norm_max * top), enc.levels, SQ_NORM_DIGITS)
    if enc.noise_sigma > 0:
        from fedpeft.privacy.discrete_gaussian import sample_discrete_gaussian

        ints = ints + sample_discrete_gaussian(enc.noise_sigma, ints.shape, rng)
    vector = np.concatenate([np.asarray(ints, np.int64), np.asarray(extras, np.int64)])
    info = {"secagg_clipped_fraction": float(clipped)}
    return to_field(vector, enc.bits), residual, info


def unflatten(flat: np.ndarray, enc: SecureEncoding, shapes: dict[str, tuple[int, ...]]) -> Tensors:
    out: Tensors = {}
    offset = 0
    for name, size in zip(enc.names, enc.sizes, strict=True):
        out[name] = flat[offset : offset + size].reshape(shapes[name]).astype(np.float32)
        offset += size
    return out


@dataclass(frozen=True)
class SecureSum:
    """What the coordinator decodes from the unmasked sum."""

    mean: Tensors  # Σ w_i x_i / Σ w_i expanded to every tensor (zeros off the subset)
    total_weight: float  # Σ w_i (uniform weights: the number of clients summed)
    mean_sq_norm: float | None  # Σ p_i ‖Δ_i‖² (FedExP)
    value_sum: np.ndarray  # the summed values in float units (for noise / tests)


def decode_secure_sum(
    field_sum: np.ndarray, enc: SecureEncoding, shapes: dict[str, tuple[int, ...]]
) -> SecureSum:
    """Decode the unmasked sum (uint64 mod 2^bits) of a cohort's encoded updates."""
    from fedpeft.privacy.secagg import dequantize, from_field

    ints = from_field(np.asarray(field_sum, np.uint64), enc.bits)
    values = dequantize(ints[: enc.sent], clip=enc.clip_range, levels=enc.levels)
    extras = ints[enc.sent :]
    weight = from_digits(extras[:WEIGHT_DIGITS], enc.levels)
    if weight <= 0:
        raise ProtocolError(f"the unmasked weights sum to {weight}; nothing to average")
    # Σ (w_i/W)·Δ_i · W / Σ w_i = the weighted mean; uniform weights: Σ Δ_i / k
    factor = 1.0 / weight if enc.uniform_weights else enc.weight_cap / weight
    flat = np.zeros(enc.dim, np.float64)
    idx = enc.subset()
    if idx is None:
        flat[:] = values * factor
    else:
        flat[idx] = values * factor
    mean_sq = None
    if enc.with_sq_norm:
        top = enc.levels**SQ_NORM_DIGITS - 1
        digits = extras[WEIGHT_DIGITS : WEIGHT_DIGITS + SQ_NORM_DIGITS]
        total_sq = from_digits(digits, enc.levels) / top * enc.sq_norm_max
        mean_sq = total_sq * enc.weight_cap / weight
    return SecureSum(unflatten(flat, enc, shapes), float(weight), mean_sq, values)


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
