"""Transport-free messages between the round engine and clients.

These are the domain types; a gRPC transport converts them to and from protobuf at its
edge (``fedpeft.protocol.serde``), the in-process and Ray backends pass them as they are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from fedpeft.errors import ProtocolError
from fedpeft.tensors import Tensors


@dataclass
class ClientState:
    """What a client keeps between its rounds.

    A real client keeps it on its device; in simulation the engine keeps it per
    virtual client and ships it with each task, so any worker can serve any client.
    """

    version: int = -1  # round of the global adapter the client holds (-1: none yet)
    held: Tensors | None = None  # the global adapter exactly as the client reconstructed it
    residual: Tensors | None = None  # error feedback: what compression dropped so far


@dataclass(frozen=True)
class TaskSettings:
    """What the coordinator sets for one client's task, beyond the job's config.

    Travels as a JSON object (:meth:`to_dict`); a value left at its default is still
    sent for the numbers every task carries, and omitted when it is ``None``."""

    lr: float | None = None  # the round schedule's client learning rate (None: train.lr)
    proximal_mu: float = 0.0  # FedProx
    logit_adjustment: float = 0.0  # FedLC's tau
    dp_clip: float | None = None  # DP: the L2 bound of what the client sends
    # SecAgg: the round's public integer encoding (fedpeft.privacy.secagg.updates
    # SecureEncoding.to_dict()), on masked-input tasks only
    secagg_encoding: Mapping[str, Any] | None = None
    # DP: what a client's own accountant needs to bound the run's epsilon (its privacy
    # policy, fedpeft.client.policy), declared on every training task of a DP run.
    # Distributed DP declares no noise multiplier: the client derives it from the bound
    # encoding's noise sigma, levels and clip and the parameters' survivor floor.
    dp_mechanism: str | None = None  # "central" (the coordinator noises) or "distributed"
    dp_noise_multiplier: float | None = None  # central: noise std on the sum / dp_clip
    dp_sampling: str | None = None  # "fixed" or "poisson": the neighbouring relation
    dp_population: int | None = None  # clients the cohorts are drawn from
    dp_cohort: int | None = (
        None  # clients per round (central DP's amplification: cohort/population)
    )
    dp_rounds: int | None = None  # rounds the run plans
    dp_delta: float | None = None
    dp_accountant: str | None = None  # "rdp" or "pld"

    #: fields that travel as text / as integers (every other scalar is a finite number)
    TEXT: ClassVar[frozenset[str]] = frozenset({"dp_mechanism", "dp_sampling", "dp_accountant"})
    INTEGER: ClassVar[frozenset[str]] = frozenset({"dp_population", "dp_cohort", "dp_rounds"})

    def replace(self, **changes: Any) -> TaskSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSettings:
        """Settings from the wire; unknown keys and values of the wrong type are refused
        (ProtocolError) rather than ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProtocolError(f"task settings: unknown key(s) {unknown}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if value is None:
                continue
            if name == "secagg_encoding":
                if not isinstance(value, Mapping):
                    raise ProtocolError("task settings: `secagg_encoding` must be an object")
                values[name] = dict(value)
                continue
            if name in cls.TEXT:
                if not isinstance(value, str):
                    raise ProtocolError(f"task settings: `{name}` must be text")
                values[name] = value
                continue
            if name in cls.INTEGER:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ProtocolError(f"task settings: `{name}` must be a non-negative integer")
                values[name] = value
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(float(value)):
                raise ProtocolError(f"task settings: `{name}` must be a finite number")
            values[name] = float(value)
        return cls(**values)


@dataclass
class TrainTask:
    """One client's work for one round."""

    round: int
    client_id: int
    seed: int
    downlink: bytes  # encoded global adapter (full) or delta against ``state.version``
    downlink_is_delta: bool
    version: int  # the global version this task brings the client to
    state: ClientState
    indices: np.ndarray | None = None  # simulation: the virtual client's data shard
    settings: TaskSettings = field(default_factory=TaskSettings)
    # "train": train and send an update; "feature_stats": send the per-class statistics
    # of the output layer's input features for classifier calibration (CCVR); under secure
    # aggregation also the protocol stages (see TASK_KINDS)
    kind: str = "train"
    # secure aggregation: the server's message for this stage (opaque framed bytes of
    # fedpeft.privacy.secagg; empty when SecAgg is off). Counted in bytes_down.
    secagg: bytes = b""


#: Every ``TrainTask.kind``. The ``secagg_*`` stages are cheap (keys, shares): a client
#: answers them without training; under SecAgg, "train" returns a masked input and
#: "feature_stats" masked statistics.
TASK_KINDS = ("train", "feature_stats", "secagg_advertise", "secagg_share", "secagg_unmask")


@dataclass
class TrainResult:
    """What comes back: an encoded update (or an error), and the client's new state."""

    round: int
    client_id: int
    num_examples: int = 0
    payload: bytes = b""
    metrics: dict[str, float] = field(default_factory=dict)
    state: ClientState | None = None
    error: str | None = None
    worker: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


class ClientApp(Protocol):
    """What a backend needs from a client implementation (a LoRA or Offsite-Tuning app,
    a test double): the initial adapter, one task's work, and evaluation."""

    def initial_state(self) -> Tensors: ...

    def train(self, task: TrainTask) -> TrainResult: ...

    def evaluate(self, params: Tensors) -> dict[str, float]: ...


#: Builds a named client app (a worker's, or the coordinator's evaluating app).
AppFactory = Callable[[str], ClientApp]
