"""Which blocks an Offsite-Tuning emulator keeps: adapter, kept middle and dropped middle."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedpeft.errors import ConfigError, ModelError


def _round_half_up(num: int, den: int) -> int:
    """``round(num / den)`` with halves rounded up, in exact integer arithmetic."""
    return (2 * num + den) // (2 * den)


def uniform_middle(num_layers: int, adapter_blocks: int, keep: int) -> tuple[int, ...]:
    """Full-model indices of the ``keep`` middle blocks an emulator keeps (uniform drop).

    The middle is blocks ``a .. L-a-1`` (``M = L - 2a`` of them). Kept are the middle's
    positions ``round(i * (M-1) / (keep-1))`` for ``i = 0 .. keep-1`` (halves up): evenly
    spaced, the first and the last middle block always among them, as in the paper's
    ``uniform_choose_layers``; ``keep = 1`` keeps the centre one.
    """
    check_adapter_blocks(num_layers, adapter_blocks)
    middle = num_layers - 2 * adapter_blocks
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= middle:
        raise ConfigError(
            "--keep-middle",
            f"must be an integer in [1, {middle}] (the middle has L - 2a = {num_layers} - "
            f"2*{adapter_blocks} = {middle} blocks), got {keep!r}",
        )
    if keep == 1:
        positions = [_round_half_up(middle - 1, 2)]
    else:
        positions = [_round_half_up(i * (middle - 1), keep - 1) for i in range(keep)]
    return tuple(adapter_blocks + p for p in positions)


def keep_for_ratio(num_layers: int, adapter_blocks: int, ratio: float) -> int:
    """Middle blocks kept for a ``ratio`` in (0, 1]: ``round(ratio * M)``, at least one."""
    check_adapter_blocks(num_layers, adapter_blocks)
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
        raise ConfigError("--keep-ratio", f"must be in (0, 1], got {ratio!r}")
    middle = num_layers - 2 * adapter_blocks
    return max(1, min(middle, math.floor(ratio * middle + 0.5)))


def check_adapter_blocks(num_layers: int, adapter_blocks: int) -> None:
    """``a`` blocks at each end must leave at least one middle block."""
    most = (num_layers - 1) // 2
    if (
        isinstance(adapter_blocks, bool)
        or not isinstance(adapter_blocks, int)
        or not 1 <= adapter_blocks <= most
    ):
        raise ConfigError(
            "--adapter-blocks",
            f"must be an integer in [1, {most}] for a backbone of {num_layers} blocks "
            f"(2a < L leaves a middle to compress), got {adapter_blocks!r}",
        )


@dataclass(frozen=True)
class OffsiteLayout:
    """Which full-model blocks are adapter, kept middle and dropped middle."""

    num_layers: int
    adapter_blocks: int
    kept_middle: tuple[int, ...]

    def __post_init__(self) -> None:
        check_adapter_blocks(self.num_layers, self.adapter_blocks)
        lo, hi = self.adapter_blocks, self.num_layers - self.adapter_blocks
        kept = list(self.kept_middle)
        if not kept or kept != sorted(set(kept)) or kept[0] < lo or kept[-1] >= hi:
            raise ModelError(
                f"kept middle blocks {kept} are not increasing indices in the middle "
                f"[{lo}, {hi - 1}]"
            )

    @classmethod
    def uniform(cls, num_layers: int, adapter_blocks: int, keep: int) -> OffsiteLayout:
        return cls(num_layers, adapter_blocks, uniform_middle(num_layers, adapter_blocks, keep))

    @property
    def adapter_indices(self) -> tuple[int, ...]:
        a, n = self.adapter_blocks, self.num_layers
        return (*range(a), *range(n - a, n))

    @property
    def emulator_blocks(self) -> tuple[int, ...]:
        """Full-model index of each emulator block, in emulator order."""
        a, n = self.adapter_blocks, self.num_layers
        return (*range(a), *self.kept_middle, *range(n - a, n))

    @property
    def dropped(self) -> tuple[int, ...]:
        a, n = self.adapter_blocks, self.num_layers
        return tuple(i for i in range(a, n - a) if i not in self.kept_middle)

    def to_json(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "adapter_blocks": self.adapter_blocks,
            "adapter_indices": list(self.adapter_indices),
            "kept_middle": list(self.kept_middle),
            "dropped_middle": list(self.dropped),
            "emulator_blocks": list(self.emulator_blocks),
        }
