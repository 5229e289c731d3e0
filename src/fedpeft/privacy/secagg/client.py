"""The client's side of SecAgg+ as an explicit state machine.

One :class:`SecAggClient` per client per round. Its secrets — the X25519 encryption key,
the seed of its masking key pair, the seed of its self mask, and the shares it holds for
its neighbours — live only in the object; what leaves it is the return value of each
stage: public keys and a commitment, AES-GCM ciphertexts addressed to neighbours, a
masked vector, and at the end one kind of share per neighbour.

Stages (each method once, in this order; anything else raises :class:`SecAggError`)::

    INIT --advertise_keys--> ADVERTISED --share_keys--> SHARED
         --masked_input--> MASKED --unmask--> DONE

A stage that raises leaves the client in the stage it was in (nothing is committed before
every check has passed).

The keys of the shares a client exchanges with its neighbours are bound to the round's
parameters (:attr:`SecAggParams.binding`, which covers the update encoding's digest): a
neighbour that was handed other parameters cannot open them, and the client cannot open
its, so a coordinator that tells clients different things gets no masked input from them.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedpeft.errors import CodecError
from fedpeft.privacy.secagg import crypto
from fedpeft.privacy.secagg.encoding import pack
from fedpeft.privacy.secagg.errors import SecAggError, SecAggRejected
from fedpeft.privacy.secagg.messages import (
    ADVERTISE,
    KEYS,
    MASK_SEED,
    PLAINTEXT,
    SELF_SEED,
    SHARE_ENTRY,
    TO_CLIENT,
    UNMASK_ENTRY,
    pack_entries,
    unpack_entries,
    unpack_ids,
)
from fedpeft.privacy.secagg.params import SecAggParams
from fedpeft.privacy.secagg.wire import SERVER, Frame, Stage, decode_frame, encode_frame

__all__ = ["ClientStage", "SecAggClient", "unmask_refusal"]


class ClientStage:
    """The client's protocol states (Flower-style constants)."""

    INIT = "init"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    DONE = "done"


class SecAggClient:
    """One client's SecAgg+ session for one round (see the module docstring)."""

    def __init__(self, client_id: int, params: SecAggParams) -> None:
        if client_id not in params.clients:
            raise SecAggError(f"client {client_id} is not in round {params.round}'s cohort")
        self.client_id = int(client_id)
        self.params = params
        self.stage = ClientStage.INIT
        self._neighbours = params.neighbours(client_id)
        self._enc_sk = X25519PrivateKey.generate()
        self._mask_seed = crypto.new_seed()
        self._mask_sk = crypto.mask_key_from_seed(self._mask_seed)
        self._self_seed = crypto.new_seed()
        # neighbour -> (encryption public key, masking public key), from the share stage
        self._peer_keys: dict[int, tuple[bytes, bytes]] = {}
        # neighbour -> (its mask-key-seed share, its self-mask-seed share) held by me
        self._held: dict[int, tuple[bytes, bytes]] = {}
        # neighbour -> kind of share revealed (never both kinds for one neighbour)
        self.revealed: dict[int, int] = {}

    # ------------------------------------------------------------------ helpers

    def _check_stage(self, expected: str, method: str) -> None:
        if self.stage != expected:
            raise SecAggError(
                f"client {self.client_id}: {method} called in stage {self.stage!r}, "
                f"expected {expected!r} (calls out of order or twice)"
            )

    def _open(self, message: bytes, stage: Stage) -> Frame:
        try:
            frame = decode_frame(message)
        except CodecError as exc:
            raise SecAggError(
                f"client {self.client_id}: bad message from the server: {exc}"
            ) from exc
        if frame.stage != stage:
            raise SecAggError(
                f"client {self.client_id}: got a {frame.stage.name} message in the "
                f"{stage.name} stage"
            )
        if frame.round != self.params.round:
            raise SecAggError(
                f"client {self.client_id}: message for round {frame.round}, this session is "
                f"round {self.params.round}"
            )
        if frame.sender != SERVER or frame.recipient != self.client_id:
            raise SecAggError(
                f"client {self.client_id}: message from {frame.sender} to {frame.recipient} "
                f"is not the server's message to this client"
            )
        return frame

    def _share_key(self, peer_enc_pk: bytes, sender: int, recipient: int) -> bytes:
        """The AES-GCM key of the shares between ``sender`` and ``recipient``: the X25519
        agreement's key, bound to every parameter of the round (its digest as HMAC input),
        so that only clients given the same parameters can open each other's shares."""
        agreed = crypto.share_key(self._enc_sk, peer_enc_pk, self.params.round, sender, recipient)
        bound = b"fedpeft-secagg-v1 params " + self.params.binding
        return hmac.new(agreed, bound, hashlib.sha256).digest()

    def _frame(self, stage: Stage, body: bytes) -> bytes:
        return encode_frame(stage, self.params.round, self.client_id, SERVER, body)

    def _parse(self, layout: struct.Struct, body: memoryview, what: str) -> list[tuple[Any, ...]]:
        try:
            return unpack_entries(layout, body, what)
        except CodecError as exc:
            raise SecAggError(f"client {self.client_id}: {exc}") from exc

    # ------------------------------------------------------------------ stages

    def advertise_keys(self) -> bytes:
        """Stage 0: the encryption and masking public keys and a commitment to the
        self-mask seed."""
        self._check_stage(ClientStage.INIT, "advertise_keys")
        commitment = crypto.seed_commitment(self._self_seed, self.params.round, self.client_id)
        body = ADVERTISE.pack(
            crypto.public_bytes(self._enc_sk), crypto.public_bytes(self._mask_sk), commitment
        )
        self.stage = ClientStage.ADVERTISED
        return self._frame(Stage.ADVERTISE, body)

    def share_keys(self, message: bytes) -> bytes:
        """Stage 1: ``message`` relays the public keys of the neighbours that advertised.
        Returns, per such neighbour, an AES-GCM ciphertext of its Shamir shares (t of k)
        of this client's two seeds."""
        self._check_stage(ClientStage.ADVERTISED, "share_keys")
        frame = self._open(message, Stage.SHARE)
        entries = self._parse(KEYS, frame.body, "key relay")
        peers: dict[int, tuple[bytes, bytes]] = {}
        for peer, enc_pk, mask_pk in entries:
            if peer not in self._neighbours:
                raise SecAggRejected(peer, f"is not a neighbour of client {self.client_id}")
            if peer in peers:
                raise SecAggRejected(peer, "its keys are relayed twice")
            try:
                crypto.check_public_key(enc_pk)
                crypto.check_public_key(mask_pk)
            except ValueError as exc:
                raise SecAggRejected(peer, f"invalid public key: {exc}") from exc
            peers[peer] = (enc_pk, mask_pk)
        t, k = self.params.threshold, self.params.degree
        if len(peers) < t:
            raise SecAggError(
                f"client {self.client_id}: only {len(peers)} of its {k} neighbours advertised "
                f"keys; its secrets need {t} holders"
            )
        mask_shares = crypto.split_secret(self._mask_seed, t, k)
        self_shares = crypto.split_secret(self._self_seed, t, k)
        rows = []
        rnd = self.params.round
        for peer, (enc_pk, _) in sorted(peers.items()):
            x = self._neighbours.index(peer) + 1
            plain = PLAINTEXT.pack(
                rnd, self.client_id, peer, x, mask_shares[x - 1], self_shares[x - 1]
            )
            key = self._share_key(enc_pk, self.client_id, peer)
            rows.append((peer, crypto.encrypt(key, plain, rnd, self.client_id, peer)))
        self._peer_keys = peers
        self.stage = ClientStage.SHARED
        return self._frame(Stage.SHARE, pack_entries(SHARE_ENTRY, rows))

    def masked_input(self, message: bytes, values: np.ndarray) -> bytes:
        """Stage 2: ``message`` relays the ciphertexts addressed to this client; ``values``
        are ``params.length`` field elements (uint64 below ``2**bits``). Returns the packed
        ``values + self mask + Σ ± pairwise masks mod 2**bits``.

        A ciphertext that fails AES-GCM authentication, or that decrypts to shares meant
        for another client, round or x-coordinate, raises :class:`SecAggRejected` naming
        its sender."""
        self._check_stage(ClientStage.SHARED, "masked_input")
        x = self._check_input(values)
        held = self._receive_shares(message)
        masked = self._mask(x, held)
        self._held = held
        self.stage = ClientStage.MASKED
        return self._frame(Stage.MASK, pack(masked, self.params.bits))

    def _check_input(self, values: np.ndarray) -> np.ndarray:
        """``values`` as an array, refused unless it is ``params.length`` integers in
        ``[0, 2**bits)``: anything else would wrap silently in the masked sum."""
        p = self.params
        x = np.asarray(values)
        if x.shape != (p.length,):
            raise SecAggError(
                f"client {self.client_id}: input has shape {x.shape}, expected ({p.length},)"
            )
        if x.dtype.kind not in "ui":
            raise SecAggError(f"client {self.client_id}: input must be integers, got {x.dtype}")
        if x.size and (int(x.min()) < 0 or int(x.max()) >> p.bits):
            raise SecAggError(f"client {self.client_id}: input values must be in [0, 2**{p.bits})")
        return x

    def _receive_shares(self, message: bytes) -> dict[int, tuple[bytes, bytes]]:
        """The shares the neighbours sent this client, ``sender -> (mask-key-seed share,
        self-mask-seed share)``. Refuses to go on with fewer than ``threshold`` senders:
        fewer neighbours would leave too few pairwise masks to hide the input."""
        p = self.params
        frame = self._open(message, Stage.MASK)
        entries = self._parse(TO_CLIENT, frame.body, "ciphertext relay")
        held: dict[int, tuple[bytes, bytes]] = {}
        for sender, blob in entries:
            if sender not in self._peer_keys:
                raise SecAggRejected(
                    sender, f"sent no keys to client {self.client_id} but a ciphertext"
                )
            if sender in held:
                raise SecAggRejected(sender, "its ciphertext is relayed twice")
            held[sender] = self._decrypt_shares(sender, blob)
        if len(held) < p.threshold:
            raise SecAggError(
                f"client {self.client_id}: shares from only {len(held)} neighbours; at least "
                f"{p.threshold} must take part for its input to stay hidden"
            )
        return held

    def _decrypt_shares(self, sender: int, blob: bytes) -> tuple[bytes, bytes]:
        """Open ``sender``'s ciphertext to this client. It must authenticate and name this
        round, the sender, this client and this client's x-coordinate: a relayed or
        replayed share would otherwise be rebuilt into the wrong secret."""
        p = self.params
        key = self._share_key(self._peer_keys[sender][0], sender, self.client_id)
        try:
            plain = crypto.decrypt(key, blob, p.round, sender, self.client_id)
        except crypto.InvalidTag:
            raise SecAggRejected(
                sender,
                f"its ciphertext to client {self.client_id} fails AES-GCM authentication "
                "(tampered, or the two clients were given different round parameters)",
            ) from None
        rnd, src, dst, index, mask_share, self_share = PLAINTEXT.unpack(plain)
        expected_x = p.share_index(sender, self.client_id)
        if (rnd, src, dst, index) != (p.round, sender, self.client_id, expected_x):
            raise SecAggRejected(
                sender,
                f"shares for client {dst} (x={index}, round {rnd}) delivered to client "
                f"{self.client_id}",
            )
        return mask_share, self_share

    def _mask(self, x: np.ndarray, held: dict[int, tuple[bytes, bytes]]) -> np.ndarray:
        """``x + self mask + Σ ± pairwise masks mod 2**bits``, with one pairwise mask per
        neighbour whose shares arrived (the sign makes each pair's masks cancel in the sum:
        the smaller id adds, the larger subtracts)."""
        p = self.params
        work = crypto.work_dtype(p.bits)
        acc = x.astype(work)
        crypto.add_mask(acc, crypto.self_mask_seed(self._self_seed, p.round, self.client_id), +1)
        for peer in sorted(held):
            seed = crypto.pair_mask_seed(
                self._mask_sk, self._peer_keys[peer][1], p.round, self.client_id, peer
            )
            crypto.add_mask(acc, seed, +1 if self.client_id < peer else -1)
        acc &= work((1 << p.bits) - 1)
        return acc

    def unmask(self, message: bytes) -> bytes:
        """Stage 3: ``message`` lists the client's surviving and dropped neighbours and the
        round's whole survivor list. Returns self-mask-seed shares of the survivors and
        mask-key-seed shares of the dropped — never both for one neighbour. Refuses
        (:class:`SecAggError`, :func:`unmask_refusal`) anything that could expose less
        than the sum the parameters promise."""
        self._check_stage(ClientStage.MASKED, "unmask")
        frame = self._open(message, Stage.UNMASK)
        try:
            survivors, dropped, everyone = unpack_ids(frame.body, 3, "unmask request")
        except CodecError as exc:
            raise SecAggError(f"client {self.client_id}: {exc}") from exc
        reason = unmask_refusal(
            self.params, self.client_id, set(self._held), set(self.revealed),
            survivors, dropped, everyone,
        )  # fmt: skip
        if reason is not None:
            raise SecAggError(f"client {self.client_id} refuses to unmask: {reason}")
        rows = [(c, SELF_SEED, self._held[c][1]) for c in sorted(survivors)]
        rows += [(c, MASK_SEED, self._held[c][0]) for c in sorted(dropped)]
        for c, kind, _ in rows:
            self.revealed[c] = kind
        self.stage = ClientStage.DONE
        self._held = {}
        return self._frame(Stage.UNMASK, pack_entries(UNMASK_ENTRY, rows))


def unmask_refusal(
    params: SecAggParams,
    client_id: int,
    held: set[int],
    revealed: set[int],
    survivors: list[int],
    dropped: list[int],
    everyone: list[int],
) -> str | None:
    """Why a client must not answer an unmask request, or None.

    ``survivors`` / ``dropped``: the neighbours whose self-mask / mask-key shares are asked
    for; ``everyone``: the survivor list the coordinator declares for the round. A client
    refuses when a neighbour is listed twice or as both (revealing both shares would expose
    its input), when it holds no shares of a listed client or already revealed them, when
    fewer than ``t`` of its neighbours survived, when the declared list contradicts the
    request (a survivor asked for as dropped, a survivor outside the cohort) or leaves the
    client itself out (a client declared dropped must not help unmask the others), or when
    the list is shorter than ``params.survivor_floor`` — the fewest clients whose noise the
    round was planned for (distributed DP's ``n_min``)."""
    both = set(survivors) & set(dropped)
    if both:
        return (
            f"client(s) {sorted(both)} listed as both survivor and dropped (revealing both "
            "shares would expose their input)"
        )
    for listed in (survivors, dropped, everyone):
        if len(set(listed)) != len(listed):
            return "a client is listed twice"
    unknown = [c for c in survivors + dropped if c not in held]
    if unknown:
        return f"it holds no shares of client(s) {sorted(unknown)}"
    already = [c for c in survivors + dropped if c in revealed]
    if already:
        return f"it already revealed shares of {already}"
    if len(survivors) < params.threshold:
        return (
            f"only {len(survivors)} of its neighbours survived, fewer than the threshold "
            f"{params.threshold}"
        )
    declared = set(everyone)
    if client_id not in declared:
        return "the declared survivors leave this client out"
    outside = declared - set(params.clients)
    if outside:
        return f"the declared survivors name clients outside the cohort: {sorted(outside)}"
    if not set(survivors) <= declared or set(dropped) & declared:
        return "the neighbours' survivor and dropped lists contradict the declared survivors"
    if len(declared) < params.survivor_floor:
        return (
            f"{len(declared)} declared survivors, fewer than the {params.survivor_floor} "
            "the round's parameters require"
        )
    return None
