"""What each client receives of the global adapter: a :class:`Downlink`.

* :class:`FullDownlink` (a dense downlink codec): the full fp32 weights every time — a
  dense delta is as large as the weights;
* :class:`DeltaDownlink` (compeft): full weights on first contact, then the compressed
  difference between the global adapter and exactly what the client holds (the engine
  keeps its own record of what each client reconstructed from what it was sent, one
  adapter per client; computed from the coordinator's payloads, never from the client);
* :class:`ChainDownlink` (chain, :mod:`fedpeft.compression.chain`): each round's change
  compressed once with server error feedback; a client gets the deltas from the version
  it holds, and the global adapter is the sum of those deltas, bit for bit.

The engine asks a downlink for each task's payload, records what a client holds once it
has trained on a task (:meth:`Downlink.held_after`), and hands it the strategy's new
adapter each round (:meth:`Downlink.release`); the chain keeps its history in the
engine's checkpointed state.
"""

from __future__ import annotations

import numpy as np

from fedpeft.compression import FULL_WEIGHTS_CODEC, Codec
from fedpeft.compression.chain import add_delta, encode_chain, params_digest
from fedpeft.coordinator.checkpoint import EngineState
from fedpeft.protocol.codecs import apply_downlink
from fedpeft.protocol.messages import ClientState, Tensors, TrainTask
from fedpeft.tensors import l2_norm

Payload = tuple[bytes, bool, ClientState]  # (bytes, is a delta, the client's state)


class FullDownlink:
    """Full fp32 weights to every client, encoded once per round."""

    keeps_history = False  # the checkpoint holds no chain

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._cache: tuple[int, bytes] | None = None

    def start(self, state: EngineState) -> None:
        """Called once with the initial adapter in ``state.params``."""
        del state

    def payload(self, state: EngineState, round_num: int, client: ClientState) -> Payload:
        return self.full_weights(state, round_num), False, client

    def held_after(self, state: EngineState, task: TrainTask) -> ClientState:
        """What the coordinator knows the client holds once it has trained on ``task``:
        the task's version, and (for a downlink that sends deltas) the adapter it rebuilt
        from what it was sent. Called before the round's release, while ``state.params``
        is still the version the task brought."""
        del state
        return ClientState(version=task.version)

    def full_weights(self, state: EngineState, round_num: int) -> bytes:
        if self._cache is None or self._cache[0] != round_num:
            self._cache = (round_num, FULL_WEIGHTS_CODEC.encode(state.params))
        return self._cache[1]

    def release(self, state: EngineState, target: Tensors, record: dict[str, object]) -> Tensors:
        """The new global adapter, given the strategy's ``target``."""
        del state, record
        return target

    def skip(self, state: EngineState) -> None:
        """A failed round: the global adapter stays."""
        del state


class DeltaDownlink(FullDownlink):
    """Compressed deltas against what each client holds (full weights on first contact)."""

    def payload(self, state: EngineState, round_num: int, client: ClientState) -> Payload:
        if client.held is None:
            return self.full_weights(state, round_num), False, client
        delta = {k: state.params[k] - client.held[k] for k in state.params}
        return self.codec.encode(delta), True, client

    def held_after(self, state: EngineState, task: TrainTask) -> ClientState:
        del state
        return ClientState(version=task.version, held=apply_downlink(self.codec, task))


class ChainDownlink(FullDownlink):
    """Each round's change compressed once (server error feedback); clients apply the
    chain of deltas from the version they hold."""

    keeps_history = True

    def start(self, state: EngineState) -> None:
        state.init_digest = params_digest(state.params)

    def payload(self, state: EngineState, round_num: int, client: ClientState) -> Payload:
        """The deltas from the version the client holds (0, the initial adapter it builds
        itself, on first contact) to the current one — or the full fp32 weights when
        those are smaller (a long-absent client)."""
        base = max(client.version, 0)
        deltas = [d for d in state.history[base : round_num - 1] if d]
        chain = encode_chain(base, state.init_digest, deltas)
        full = self.full_weights(state, round_num)
        if len(chain) >= len(full):
            return full, False, client
        return chain, True, client

    def held_after(self, state: EngineState, task: TrainTask) -> ClientState:
        """Every client that applied the chain holds the global adapter bit for bit: the
        same arrays for all of them (the checkpoint stores each version once)."""
        return ClientState(version=task.version, held=state.params)

    def release(self, state: EngineState, target: Tensors, record: dict[str, object]) -> Tensors:
        """Move the global adapter toward ``target`` by one compressed delta, keeping what
        compression dropped for the next round. Every client applies exactly this delta,
        so the new global adapter is bit-identical to every client's copy of it."""
        current = state.params
        residual = state.server_residual or {}
        want = {
            k: (target[k] - current[k] + residual.get(k, 0.0)).astype(np.float32) for k in current
        }
        encoded = self.codec.encode(want)
        sent = self.codec.decode(encoded)
        state.server_residual = {k: (want[k] - sent[k]).astype(np.float32) for k in want}
        state.history.append(encoded)
        record["downlink_delta_bytes"] = len(encoded)
        want_norm = l2_norm(want)
        left = l2_norm(state.server_residual)
        record["server_residual_ratio"] = left / want_norm if want_norm > 0 else 0.0
        return add_delta(current, sent)

    def skip(self, state: EngineState) -> None:
        state.history.append(b"")  # version r is version r - 1


Downlink = FullDownlink


def make_downlink(codec: Codec, chain: bool) -> Downlink:
    """The downlink for a codec: a compressing codec sends deltas (per client, or as one
    chain); a dense one sends the full weights."""
    if chain:
        if not codec.compresses:
            raise ValueError("a chain downlink needs a compressing downlink codec")
        return ChainDownlink(codec)
    return DeltaDownlink(codec) if codec.compresses else FullDownlink(codec)
