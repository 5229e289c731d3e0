"""Error feedback: remember what compression dropped and send it next round.

ComPEFT is a biased compressor: most coordinates of every update are zeroed
and the rest are rounded to ±γ. Error feedback (Seide et al. 2014; Karimireddy
et al. 2019, "EF-SGD") keeps, per client, the residual ``e`` of the last
compression and adds it to the next update before compressing::

    corrected = update + e            # add_residual()
    sent      = C(corrected)          # codec.encode / codec.reconstruct
    e         = corrected - sent      # residual_of()

so every coordinate is eventually transmitted. The client keeps ``e`` in its
state (:class:`fedpeft.protocol.messages.ClientState`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedpeft.compression.base import Tensors

__all__ = ["add_residual", "residual_of"]


def add_residual(
    update: Mapping[str, np.ndarray], residual: Mapping[str, np.ndarray], decay: float = 1.0
) -> Tensors:
    """``update + decay · residual`` as float32 (the corrected update that is compressed).

    ``decay`` < 1 carries only that fraction: with partial participation a residual is
    rounds old when its client returns, computed against a global adapter that has moved
    on since.
    """
    return {k: (v + decay * residual[k]).astype(np.float32) for k, v in update.items()}


def residual_of(corrected: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]) -> Tensors:
    """What compression dropped: ``corrected − sent`` (float32), carried to the next round."""
    return {k: (v - sent[k]).astype(np.float32) for k, v in corrected.items()}
