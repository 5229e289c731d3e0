"""The public encoding of a client's float update into the integer vector SecAgg+ masks,
and the decoding of the cohort's unmasked sum: the two ends of a secure round (the
client encodes, the coordinator decodes only the sum).

**The encoding** (:class:`SecureEncoding`, public, the same for the whole cohort, sent by
the coordinator with each masked-input task) turns a float update into ``length``
integers mod 2^bits:

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedpeft.errors import ProtocolError
from fedpeft.privacy.secagg.encoding import dequantize, from_field, quantize, to_field
from fedpeft.protocol.messages import Tensors

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
    def from_dict(cls, data: Mapping[str, Any]) -> SecureEncoding:
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
