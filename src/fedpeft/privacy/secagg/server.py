"""The coordinator's side of SecAgg+ as an explicit state machine.

The server sees public keys and seed commitments, AES-GCM ciphertexts it cannot open,
masked vectors (uniform mod 2**bits), and at the end one kind of share per (holder,
owner) pair — from which it rebuilds the self-mask seeds of the survivors and the
masking keys of clients that dropped after sharing, and so the **sum** of the survivors'
inputs, never one input.

Stages and client sets (Bell et al. 2020, with ``N(i)`` the neighbours of ``i``)::

    advertise  expects the cohort;     U1 = clients whose keys arrived
    share      expects U1*;            U2 = clients whose ciphertexts arrived
    mask       expects U2*;            U3 = clients whose masked vector arrived (survivors)
    unmask     expects U3;             shares arrive from U4 ⊆ U3
    done       result() = Σ_{i ∈ U3} x_i mod 2**bits

``*``: after each stage, clients with fewer than ``t`` neighbours left in the set are
removed until none is (their secrets could not be rebuilt). A stage closes with
:meth:`close_stage` — whoever has not answered by then has dropped — and raises
:class:`SecAggAborted` when too few clients or shares are left to finish; a reconstructed
secret that does not match its owner's public key or commitment also aborts the round.
Nothing is ever summed from a message that failed a check: :meth:`receive` validates a
message completely before it changes any state and raises :class:`SecAggRejected` naming
the client otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from fedpeft.errors import CodecError
from fedpeft.privacy.secagg import crypto
from fedpeft.privacy.secagg.encoding import unpack
from fedpeft.privacy.secagg.errors import SecAggAborted, SecAggError, SecAggRejected
from fedpeft.privacy.secagg.messages import (
    ADVERTISE,
    KEYS,
    MASK_SEED,
    SELF_SEED,
    SHARE_ENTRY,
    TO_CLIENT,
    UNMASK_ENTRY,
    pack_entries,
    pack_ids,
    unpack_entries,
)
from fedpeft.privacy.secagg.params import SecAggParams
from fedpeft.privacy.secagg.wire import SERVER, Stage, decode_frame, encode_frame

__all__ = ["SecAggServer", "ServerStage"]


class ServerStage:
    """The server's protocol states (Flower-style constants)."""

    ADVERTISE = "advertise"
    SHARE = "share"
    MASK = "mask"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


_WIRE = {
    ServerStage.ADVERTISE: Stage.ADVERTISE,
    ServerStage.SHARE: Stage.SHARE,
    ServerStage.MASK: Stage.MASK,
    ServerStage.UNMASK: Stage.UNMASK,
}


class SecAggServer:
    """The coordinator's SecAgg+ session for one round (see the module docstring)."""

    def __init__(self, params: SecAggParams) -> None:
        self.params = params
        self.stage = ServerStage.ADVERTISE
        self._graph = {c: frozenset(params.neighbours(c)) for c in params.clients}
        self._expected: frozenset[int] = frozenset(params.clients)
        self._received: dict[int, Any] = {}
        # advertise: client -> (enc_pk, mask_pk, commitment)
        self._keys: dict[int, tuple[bytes, bytes, bytes]] = {}
        # share: recipient -> sender -> ciphertext
        self._ciphertexts: dict[int, dict[int, bytes]] = {}
        self._u2: frozenset[int] = frozenset()
        self._u3: frozenset[int] = frozenset()
        self._sum: np.ndarray | None = None
        self._result: np.ndarray | None = None
        #: after the mask stage: clients whose masked input was accepted (their inputs
        #: are the sum) and the rest of the cohort
        self.survivors: tuple[int, ...] = ()
        self.dropped: tuple[int, ...] = ()
        #: stage -> (bytes received, bytes sent) in that stage
        self.stage_bytes: dict[str, tuple[int, int]] = {}

    # ------------------------------------------------------------------ public API

    def expected(self) -> tuple[int, ...]:
        """Clients the current stage waits for (sorted)."""
        if self.stage in (ServerStage.DONE, ServerStage.ABORTED):
            return ()
        return tuple(sorted(self._expected))

    def received(self) -> tuple[int, ...]:
        """Clients whose message of the current stage was accepted."""
        return tuple(sorted(self._received))

    def receive(self, client_id: int, payload: bytes) -> None:
        """Accept one client's message for the current stage, or raise
        :class:`SecAggRejected` naming it (state unchanged)."""
        if self.stage not in _WIRE:
            raise SecAggRejected(client_id, f"the round is {self.stage}; no stage is open")
        if client_id not in self._graph:
            raise SecAggRejected(client_id, f"not in round {self.params.round}'s cohort")
        if client_id not in self._expected:
            raise SecAggRejected(client_id, f"not expected in the {self.stage} stage")
        if client_id in self._received:
            raise SecAggRejected(client_id, f"second message in the {self.stage} stage")
        try:
            frame = decode_frame(payload)
        except CodecError as exc:
            raise SecAggRejected(client_id, str(exc)) from exc
        if frame.stage != _WIRE[self.stage]:
            raise SecAggRejected(
                client_id, f"a {frame.stage.name} message in the {self.stage} stage"
            )
        if frame.round != self.params.round:
            raise SecAggRejected(
                client_id, f"message for round {frame.round}, this is round {self.params.round}"
            )
        if frame.sender != client_id or frame.recipient != SERVER:
            raise SecAggRejected(
                client_id,
                f"frame says it is from {frame.sender} to {frame.recipient}, not from "
                f"{client_id} to the server",
            )
        parse = {
            ServerStage.ADVERTISE: self._parse_advertise,
            ServerStage.SHARE: self._parse_share,
            ServerStage.MASK: self._parse_mask,
            ServerStage.UNMASK: self._parse_unmask,
        }[self.stage]
        try:
            parsed: Any = parse(client_id, frame.body)
        except CodecError as exc:
            raise SecAggRejected(client_id, str(exc)) from exc
        # every check passed: only now does the state change
        if self.stage == ServerStage.MASK:
            if self._sum is None:
                self._sum = np.zeros(self.params.length, crypto.work_dtype(self.params.bits))
            np.add(self._sum, parsed, out=self._sum)
            parsed = True  # the vector is in the running sum; keep no copy
        self._received[client_id] = parsed
        self._count(len(payload), 0)

    def close_stage(self) -> None:
        """End the current stage: whoever did not answer has dropped. Raises
        :class:`SecAggAborted` if the round can no longer complete."""
        closer = {
            ServerStage.ADVERTISE: self._close_advertise,
            ServerStage.SHARE: self._close_share,
            ServerStage.MASK: self._close_mask,
            ServerStage.UNMASK: self._close_unmask,
        }.get(self.stage)
        if closer is None:
            raise SecAggError(f"no stage to close: the round is {self.stage}")
        try:
            closer()
        except SecAggAborted:
            self.stage = ServerStage.ABORTED
            self._sum = None
            raise
        self._received = {}

    def message_for(self, client_id: int) -> bytes:
        """The message for ``client_id`` in the current stage (opened by the last
        :meth:`close_stage`)."""
        if self.stage not in (ServerStage.SHARE, ServerStage.MASK, ServerStage.UNMASK):
            raise SecAggError(f"no message to send in the {self.stage} stage")
        if client_id not in self._expected:
            raise SecAggError(f"client {client_id} takes no part in the {self.stage} stage")
        nbrs = self._graph[client_id]
        if self.stage == ServerStage.SHARE:
            rows: Iterable[tuple[object, ...]] = (
                (c, self._keys[c][0], self._keys[c][1]) for c in sorted(nbrs & self._expected)
            )
            body = pack_entries(KEYS, rows)
        elif self.stage == ServerStage.MASK:
            inbox = self._ciphertexts.get(client_id, {})
            body = pack_entries(TO_CLIENT, ((s, inbox[s]) for s in sorted(nbrs & self._u2)))
        else:
            # the neighbours to reveal shares of, and the whole survivor list: every
            # client checks it against the parameters' floor and its own place in it
            body = pack_ids(
                sorted(nbrs & self._u3), sorted(nbrs & (self._u2 - self._u3)), sorted(self._u3)
            )
        msg = encode_frame(_WIRE[self.stage], self.params.round, SERVER, client_id, body)
        self._count(0, len(msg))
        return msg

    def result(self) -> np.ndarray:
        """The sum mod ``2**bits`` (uint64) of the survivors' inputs, after the unmask
        stage closed."""
        if self.stage != ServerStage.DONE or self._result is None:
            raise SecAggError(f"no result: the round is {self.stage}")
        return self._result.copy()

    # ------------------------------------------------------------------ parsing

    def _parse_advertise(self, client_id: int, body: memoryview) -> tuple[bytes, bytes, bytes]:
        if len(body) != ADVERTISE.size:
            raise CodecError(f"key advertisement of {len(body)} bytes, expected {ADVERTISE.size}")
        enc_pk, mask_pk, commitment = ADVERTISE.unpack(body)
        try:
            crypto.check_public_key(enc_pk)
            crypto.check_public_key(mask_pk)
        except ValueError as exc:
            raise SecAggRejected(client_id, f"invalid public key: {exc}") from exc
        for other, (e, m, _) in self._received.items():
            if {e, m} & {enc_pk, mask_pk}:
                raise SecAggRejected(client_id, f"advertises a public key of client {other}")
        return enc_pk, mask_pk, commitment

    def _parse_share(self, client_id: int, body: memoryview) -> dict[int, bytes]:
        entries = unpack_entries(SHARE_ENTRY, body, "encrypted shares")
        wanted = self._graph[client_id] & self._expected
        out: dict[int, bytes] = {}
        for recipient, blob in entries:
            if recipient not in wanted:
                raise SecAggRejected(
                    client_id,
                    f"a share for client {recipient}, which is not a neighbour that advertised",
                )
            if recipient in out:
                raise SecAggRejected(client_id, f"two shares for client {recipient}")
            out[recipient] = blob
        missing = sorted(wanted - out.keys())
        if missing:
            raise SecAggRejected(client_id, f"no share for neighbour(s) {missing}")
        return out

    def _parse_mask(self, client_id: int, body: memoryview) -> np.ndarray:
        p = self.params
        values = unpack(body, p.bits, p.length)  # wrong length / padding -> CodecError
        return values.astype(crypto.work_dtype(p.bits))

    def _parse_unmask(self, client_id: int, body: memoryview) -> list[tuple[int, int, bytes]]:
        entries = unpack_entries(UNMASK_ENTRY, body, "unmask shares")
        nbrs = self._graph[client_id]
        survivors = nbrs & self._u3
        dropped = nbrs & (self._u2 - self._u3)
        seen: set[int] = set()
        out = []
        for owner, kind, share in entries:
            wanted = {SELF_SEED: survivors, MASK_SEED: dropped}.get(kind)
            if wanted is None:
                raise SecAggRejected(client_id, f"unknown share kind {kind}")
            if owner not in wanted:
                raise SecAggRejected(
                    client_id,
                    f"a {'self-mask' if kind == SELF_SEED else 'mask-key'} share of client "
                    f"{owner}, which was not asked for",
                )
            if owner in seen:
                raise SecAggRejected(client_id, f"two shares of client {owner}")
            seen.add(owner)
            out.append((owner, kind, share))
        return out

    # ------------------------------------------------------------------ closing

    def _count(self, nin: int, nout: int) -> None:
        a, b = self.stage_bytes.get(self.stage, (0, 0))
        self.stage_bytes[self.stage] = (a + nin, b + nout)

    def _prune(self, members: Iterable[int]) -> frozenset[int]:
        """Remove clients with fewer than t neighbours in the set, until none is left."""
        alive = set(members)
        t = self.params.threshold
        changed = True
        while changed:
            weak = {c for c in alive if len(self._graph[c] & alive) < t}
            changed = bool(weak)
            alive -= weak
        return frozenset(alive)

    def _need(self, members: frozenset[int], what: str) -> None:
        t = self.params.threshold
        if len(members) < t + 1:
            raise SecAggAborted(
                f"round {self.params.round}: {what}: {len(members)} client(s) left, the "
                f"threshold t={t} needs at least {t + 1}"
            )

    def _close_advertise(self) -> None:
        self._keys = dict(self._received)
        u1 = self._prune(self._keys)
        self._need(u1, "after key advertisement")
        self._expected = u1
        self.stage = ServerStage.SHARE

    def _close_share(self) -> None:
        u2 = self._prune(self._received)
        self._need(u2, "after key sharing")
        inbox: dict[int, dict[int, bytes]] = {c: {} for c in u2}
        for sender in u2:
            for recipient, blob in self._received[sender].items():
                if recipient in u2:
                    inbox[recipient][sender] = blob
        self._ciphertexts = inbox
        self._u2 = u2
        self._expected = u2
        self.stage = ServerStage.MASK

    def _close_mask(self) -> None:
        u3 = frozenset(self._received)
        self._u3 = u3
        self.survivors = tuple(sorted(u3))
        self.dropped = tuple(c for c in self.params.clients if c not in u3)
        self._ciphertexts = {}
        self._need(u3, "after masked inputs")
        if len(u3) < self.params.min_survivors:
            raise SecAggAborted(
                f"round {self.params.round}: {len(u3)} masked inputs arrived, fewer than the "
                f"{self.params.min_survivors} survivors the round's noise was sized for "
                "(clients would refuse to unmask)"
            )
        t = self.params.threshold
        for c in sorted(self._u2):
            live = len(self._graph[c] & u3)
            if (c in u3 or live) and live < t:
                raise SecAggAborted(
                    f"round {self.params.round}: client {c} has {live} surviving "
                    f"neighbour(s), its {'self-mask' if c in u3 else 'mask-key'} seed needs "
                    f"t={t} shares"
                )
        self._expected = u3
        self.stage = ServerStage.UNMASK

    def _close_unmask(self) -> None:
        p = self.params
        shares: dict[tuple[int, int], list[tuple[int, bytes]]] = {}
        for holder, rows in self._received.items():
            for owner, kind, share in rows:
                x = p.share_index(owner, holder)
                shares.setdefault((owner, kind), []).append((x, share))
        self_seeds = {c: self._rebuild(c, SELF_SEED, shares) for c in sorted(self._u3)}
        dropped = sorted(c for c in self._u2 - self._u3 if self._graph[c] & self._u3)
        mask_keys = {c: self._rebuild(c, MASK_SEED, shares) for c in dropped}
        if self._sum is None:  # _need guarantees survivors, so a sum exists
            raise SecAggError("no masked input was summed")
        acc = self._sum
        for c, seed in self_seeds.items():
            crypto.add_mask(acc, crypto.self_mask_seed(seed, p.round, c), -1)
        for j, seed in mask_keys.items():
            sk = crypto.mask_key_from_seed(seed)
            for i in sorted(self._graph[j] & self._u3):
                key = crypto.pair_mask_seed(sk, self._keys[i][1], p.round, i, j)
                # survivor i added +mask if i < j, else -mask; take it back
                crypto.add_mask(acc, key, -1 if i < j else +1)
        self._result = acc.astype(np.uint64) & np.uint64((1 << p.bits) - 1)
        self._sum = None
        self._expected = frozenset()
        self.stage = ServerStage.DONE

    def _rebuild(
        self, owner: int, kind: int, shares: dict[tuple[int, int], list[tuple[int, bytes]]]
    ) -> bytes:
        """Reconstruct ``owner``'s seed of ``kind`` and check it against what the owner
        published (its masking public key, or its self-mask seed commitment)."""
        p = self.params
        t = p.threshold
        have = sorted(shares.get((owner, kind), []))
        name = "self-mask seed" if kind == SELF_SEED else "mask-key seed"
        if len(have) < t:
            raise SecAggAborted(
                f"round {p.round}: {len(have)} share(s) of client {owner}'s {name} arrived, "
                f"t={t} are needed"
            )
        _, mask_pk, commitment = self._keys[owner]
        # the first t shares, then (one forged or corrupted share among them) each t-subset
        # that leaves one of them out: any single bad share is survived when t+1 arrived
        subsets = [have[:t]]
        if len(have) > t:
            subsets += [(have[:j] + have[j + 1 :])[:t] for j in range(t)]
        for subset in subsets:
            seed = crypto.combine_shares(subset)
            if kind == SELF_SEED:
                ok = crypto.seed_commitment(seed, p.round, owner) == commitment
            else:
                ok = crypto.public_bytes(crypto.mask_key_from_seed(seed)) == mask_pk
            if ok:
                return seed
        raise SecAggAborted(
            f"round {p.round}: the shares of client {owner}'s {name} do not reconstruct the "
            f"secret it committed to (a forged or corrupted share)"
        )
