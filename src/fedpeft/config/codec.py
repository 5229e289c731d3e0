"""``[codec]``: how updates (up) and global-adapter deltas (down) are encoded on the wire.

Codec names, ComPEFT's scale rules and scopes and the dense wire dtypes are read from
:mod:`fedpeft.compression`, the one place a codec is defined (like PEFT's
``register_peft_method``). That package sits above this one; it is imported here because
it is light (numpy, no torch) and imports nothing from :mod:`fedpeft.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedpeft.compression import WIRE_DTYPES, ScaleRule, Scope, available_codecs, codec_class
from fedpeft.config.checks import choices, doc, fraction, one_of, positive
from fedpeft.errors import ConfigError

#: ``codec.downlink`` besides the codec names: ``auto``, and ``chain`` (each round's
#: change compressed once, fedpeft.compression.chain)
DOWNLINK_MODES = ("auto", "chain")

_SCALES = [rule.value for rule in ScaleRule]
_SCOPES = [scope.value for scope in Scope]


@dataclass
class CodecSettings:
    """How updates (up) and global-adapter deltas (down) are encoded on the wire."""

    name: str = field(default="dense", metadata=doc(choices(available_codecs())))
    dtype: str = field(default="fp32", metadata=doc(f"dense: {choices(WIRE_DTYPES)}"))
    density: float = field(default=0.1, metadata=doc("compeft: fraction kept, in (0, 1]"))
    scope: str = field(default="per_tensor", metadata=doc(f"compeft top-k: {choices(_SCOPES)}"))
    scale: str = field(default="mean_abs", metadata=doc(f"compeft scale: {choices(_SCALES)}"))
    alpha: float = field(default=1.0, metadata=doc("compeft alpha for alpha_std"))
    dense_below: int = field(
        default=0, metadata=doc("compeft: tensors with fewer entries go exact float32")
    )
    error_feedback: bool = field(default=False, metadata=doc("carry what compression dropped"))
    feedback_decay: float = field(
        default=1.0,
        metadata=doc("error feedback: fraction of the carried residual added (1 = all)"),
    )
    downlink: str = field(
        default="auto",
        metadata=doc(
            "global adapter sent down: dense (full weights), compeft (a compressed delta "
            "per client, full weights on first contact) or chain (each round's change "
            "compressed once, with server error feedback; clients catch up from a chain of "
            "them); auto: chain with --codec compeft, else dense"
        ),
    )
    downlink_density: float = field(
        default=0.1, metadata=doc("chain downlink: fraction of coordinates each round sends")
    )

    def __post_init__(self) -> None:
        one_of("codec", "name", self.name, available_codecs())
        one_of("codec", "downlink", self.downlink, (*DOWNLINK_MODES, *available_codecs()))
        if not (
            isinstance(self.downlink_density, (int, float)) and 0.0 < self.downlink_density <= 1.0
        ):
            raise ConfigError(
                "codec.downlink_density",
                f"must be in (0, 1] (a fraction), got {self.downlink_density!r}",
            )
        one_of("codec", "dtype", self.dtype, WIRE_DTYPES)
        if not (isinstance(self.density, (int, float)) and 0.0 < self.density <= 1.0):
            raise ConfigError(
                "codec.density", f"must be in (0, 1] (a fraction), got {self.density!r}"
            )
        one_of("codec", "scope", self.scope, _SCOPES)
        one_of("codec", "scale", self.scale, _SCALES)
        positive("codec", "alpha", self.alpha)
        fraction("codec", "feedback_decay", self.feedback_decay, one_allowed=True)
        if not isinstance(self.dense_below, int) or self.dense_below < 0:
            raise ConfigError(
                "codec.dense_below", f"must be an integer >= 0, got {self.dense_below!r}"
            )

    @property
    def compresses(self) -> bool:
        """Whether the uplink codec compresses (declared by the codec class)."""
        return codec_class(self.name).compresses

    @property
    def downlink_mode(self) -> str:
        """The downlink in effect: ``auto`` is ``chain`` for a compressing uplink (it sent
        the fewest bytes to the same accuracy, bench/results/realjob_vs_flower.json), else
        ``dense``."""
        if self.downlink == "auto":
            return "chain" if self.compresses else "dense"
        return self.downlink
