"""The client's side of secure aggregation: the protocol's stages and the masked input
(the update itself is encoded by :class:`fedpeft.client.update.UpdateSender`).

**Secrets between stages.** A client's SecAgg state (its X25519 private keys, its self-mask
seed, the shares it holds for its neighbours) lives in :attr:`SecureClient.sessions`, an
attribute of the client application object — on a device that is the daemon's memory; in
simulation it is the memory of the worker process that serves the client for the whole
round (the Ray backend pins a client's stages of one round to one worker). The round
engine and the secure-aggregation server only ever receive what the stage methods return:
public keys, AES-GCM ciphertexts, masked vectors and shares. Nothing in
:mod:`fedpeft.coordinator` imports this module.

**The encoding is checked against the round's parameters** before the masked input is
formed: parameters that bind an encoding (``SecAggParams.encoding_digest``) accept only
that one, and the shares' keys are bound to the parameters themselves, so every client
whose input can reach the sum was given the same σ, clip, levels, subset and floor
(:mod:`fedpeft.privacy.secagg.params`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedpeft.errors import ProtocolError
from fedpeft.protocol.messages import TrainTask


class SecureClient:
    """Answers a client's SecAgg+ stages; holds its per-round protocol sessions."""

    def __init__(self) -> None:
        # (round, client_id) -> fedpeft.privacy.secagg.SecAggClient: the client's secrets
        self.sessions: dict[tuple[int, int], Any] = {}

    def session(self, task: TrainTask) -> Any:
        key = (task.round, task.client_id)
        if key not in self.sessions:
            raise ProtocolError(
                f"client {task.client_id} has no secure-aggregation session for round "
                f"{task.round} (its keys were never advertised here)"
            )
        return self.sessions[key]

    def stage(self, task: TrainTask) -> bytes:
        """Answer a cheap stage (keys, shares, unmask): no model, no data."""
        from fedpeft.privacy.secagg import SecAggClient, SecAggParams

        if task.kind == "secagg_advertise":
            # a new round: sessions of earlier rounds are over (dropped or done)
            for key in [k for k in self.sessions if k[1] == task.client_id]:
                del self.sessions[key]
            params = SecAggParams.from_bytes(task.secagg)
            if params.round != task.round or task.client_id not in params.clients:
                raise ProtocolError(
                    f"secure-aggregation parameters for round {params.round} do not name "
                    f"client {task.client_id} in round {task.round}"
                )
            client = SecAggClient(task.client_id, params)
            self.sessions[(task.round, task.client_id)] = client
            return bytes(client.advertise_keys())
        if task.kind == "secagg_share":
            return bytes(self.session(task).share_keys(task.secagg))
        if task.kind == "secagg_unmask":
            try:
                return bytes(self.session(task).unmask(task.secagg))
            finally:
                del self.sessions[(task.round, task.client_id)]  # the round is over for us
        raise ProtocolError(f"unknown secure-aggregation stage {task.kind!r}")

    def masked_input(self, task: TrainTask, vector: np.ndarray) -> bytes:
        """The masked input of ``vector`` (encoded with the task's encoding), refused
        (SecAggError) when that encoding is not the one the round's parameters bind."""
        session = self.session(task)
        session.params.check_encoding(task.settings.secagg_encoding)
        return bytes(session.masked_input(task.secagg, vector))
