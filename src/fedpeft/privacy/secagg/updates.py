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
   because summation is linear): the weight ``w`` exactly — as many digits as
   ``weight_cap`` needs, never truncated — and for FedExP the weighted squared norm
   ``(w/W)·‖Δ‖²``;
5. distributed DP: add discrete Gaussian noise (integers) to the value coordinates.

**Wrap detection.** The noise is unbounded, so the field is sized with room for
``2·NOISE_HEADROOM_SIGMAS`` standard deviations of the noise on the sum
(``√clients · noise_sigma``) beyond the values' range (``fedpeft.coordinator.secure``), and
the decoder refuses a sum with any coordinate beyond the values' range plus
``NOISE_HEADROOM_SIGMAS`` of them: a coordinate that wrapped lands at least that far out
unless its noise exceeded 24 standard deviations, so a wrapped sum fails the round instead
of decoding into a wrong adapter.
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

#: Extra scalar coordinates after the values, in this order: the weight (as many digits
#: as ``weight_cap`` needs, :attr:`SecureEncoding.weight_digits`), then FedExP's spread.
SQ_NORM_DIGITS = 3
#: Distributed DP: a decoded coordinate may exceed the values' range by this many standard
#: deviations of the noise on the sum; the field leaves twice as much room (see above).
NOISE_HEADROOM_SIGMAS = 8.0


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
    def weight_digits(self) -> int:
        """Base-``levels`` digits that hold any weight up to ``weight_cap`` exactly."""
        digits, capacity = 1, self.levels
        while capacity <= self.weight_cap:
            digits, capacity = digits + 1, capacity * self.levels
        return digits

    @property
    def length(self) -> int:
        """Integers in the masked vector: the values, then the weight and FedExP digits."""
        return self.sent + self.weight_digits + (SQ_NORM_DIGITS if self.with_sq_norm else 0)

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
    """``value`` (0 <= value < base**digits) as little-endian base-``base`` digits; a value
    that does not fit is refused, never truncated."""
    if not 0 <= value < base**digits:
        raise ValueError(f"{value} does not fit in {digits} base-{base} digits")
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
    extras = to_digits(w, enc.levels, enc.weight_digits)
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
    extras = ints[enc.sent :]
    weight = from_digits(extras[: enc.weight_digits], enc.levels)
    if weight <= 0:
        raise ProtocolError(f"the unmasked weights sum to {weight}; nothing to average")
    if enc.noise_sigma > 0:
        check_no_wrap(ints[: enc.sent], enc, clients=weight if enc.uniform_weights else None)
    values = dequantize(ints[: enc.sent], clip=enc.clip_range, levels=enc.levels)
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
        start = enc.weight_digits
        digits = extras[start : start + SQ_NORM_DIGITS]
        total_sq = from_digits(digits, enc.levels) / top * enc.sq_norm_max
        mean_sq = total_sq * enc.weight_cap / weight
    return SecureSum(unflatten(flat, enc, shapes), float(weight), mean_sq, values)


def noise_allowance(clients: int, sigma: float) -> float:
    """How far past the values' range (integer units) a decoded sum of ``clients`` noisy
    inputs may lie: ``NOISE_HEADROOM_SIGMAS`` standard deviations of their summed noise."""
    return NOISE_HEADROOM_SIGMAS * math.sqrt(clients) * sigma


def check_no_wrap(value_sums: np.ndarray, enc: SecureEncoding, clients: int | None) -> None:
    """Refuse (:class:`ProtocolError`) a noisy sum with a coordinate outside
    ``±(clients·levels + noise_allowance)``: it wrapped mod 2^bits (or its noise went past
    the headroom the field was sized for) — and any noisy sum in a field without twice that
    allowance to spare, where a wrap could not be told apart. ``clients``: whose inputs are
    summed (None: the largest the field holds)."""
    half = 2 ** (enc.bits - 1) - 1
    n = clients if clients is not None else max(1, half // max(1, enc.levels))
    bound = n * enc.levels + noise_allowance(n, enc.noise_sigma)
    if bound + noise_allowance(n, enc.noise_sigma) > half:
        raise ProtocolError(
            f"a field of {enc.bits} bits has no room to detect a wrap of {n} clients' values "
            f"(±{enc.levels} each) with noise sigma {enc.noise_sigma:g}: the sum may have "
            "wrapped, so it is not used"
        )
    worst = int(np.max(np.abs(value_sums))) if value_sums.size else 0
    if worst > bound:
        outside = int(np.count_nonzero(np.abs(value_sums) > bound))
        raise ProtocolError(
            f"the noisy sum wrapped mod 2^{enc.bits}: {outside} coordinate(s) beyond "
            f"±{bound:.0f} (largest {worst}); the field's noise headroom was exceeded"
        )
