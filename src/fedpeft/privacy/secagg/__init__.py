"""SecAgg+ secure aggregation (Bell et al. 2020), transport-free.

The coordinator of a secure round learns only the **sum** of the survivors' integer
vectors mod ``2**bits``, and the round completes when clients drop at any stage as long as
every secret it must rebuild keeps ``threshold`` live holders. Both sides are explicit
state machines that exchange versioned, checksummed binary frames (:mod:`.wire`), so any
transport — the in-process and Ray simulation backends, gRPC — carries the same bytes:

* :class:`SecAggClient` — one per client per round: ``advertise_keys`` → ``share_keys`` →
  ``masked_input`` → ``unmask``;
* :class:`SecAggServer` — ``receive`` each client's message, ``close_stage`` when the
  stage's time is up, ``message_for`` each client of the next stage, ``result``;
* :func:`plan_secagg` — the neighbour degree and threshold for a cohort (the rule is in
  its docstring); :class:`SecAggParams` — what the round agrees on;
* integers: :func:`quantize` / :func:`dequantize`, :func:`to_field` / :func:`from_field`,
  :func:`sum_bits`, and the bit packing of vectors on the wire (:func:`pack` /
  :func:`unpack`).

See ``docs/secagg.md`` for the protocol, the threat model and measured costs.
"""

from fedpeft.privacy.secagg.client import ClientStage, SecAggClient
from fedpeft.privacy.secagg.encoding import (
    MAX_BITS,
    dequantize,
    from_field,
    pack,
    packed_nbytes,
    quantize,
    sum_bits,
    to_field,
    unpack,
)
from fedpeft.privacy.secagg.errors import SecAggAborted, SecAggError, SecAggRejected
from fedpeft.privacy.secagg.params import (
    MIN_COHORT,
    SecAggParams,
    harary_neighbours,
    plan_secagg,
    survivor_floor,
)
from fedpeft.privacy.secagg.server import SecAggServer, ServerStage
from fedpeft.privacy.secagg.wire import SERVER, Stage

__all__ = [
    "MAX_BITS",
    "MIN_COHORT",
    "SERVER",
    "ClientStage",
    "SecAggAborted",
    "SecAggClient",
    "SecAggError",
    "SecAggParams",
    "SecAggRejected",
    "SecAggServer",
    "ServerStage",
    "Stage",
    "dequantize",
    "from_field",
    "harary_neighbours",
    "pack",
    "packed_nbytes",
    "plan_secagg",
    "quantize",
    "sum_bits",
    "survivor_floor",
    "to_field",
    "unpack",
]
