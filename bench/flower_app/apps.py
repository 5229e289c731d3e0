"""The Flower 1.41 side of ``bench/fed_vs_flower.py``: a ServerApp and a ClientApp
(Message API) doing the same trivial work as fedpeft's synthetic client.

Every client receives the global array (``FLOATS`` float32 values), adds ``DELTA`` to
it (the "training") and sends the whole array back; the server runs Flower's
message-based ``FedAvg`` over all nodes each round, with no federated evaluation.

This module runs only under the separate Flower venv (``/tmp/flwr-venv``); it is
imported by name by ``simulate.py`` and, through the PYTHONPATH Flower hands to its Ray
workers, by the client actors.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

DELTA = np.float32(1e-3)  # what every client adds: identical to fedpeft's SyntheticClientApp

# Filled in by simulate.py before the run (the ServerApp runs in the driver process).
SETTINGS: dict[str, int] = {"clients": 300, "rounds": 3, "floats": 100_000}
TIMES: dict[str, list[float]] = {"round_start": [], "round_end": []}

client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    del context
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    trained = [a + DELTA for a in arrays]  # the trivial "training"
    content = RecordDict(
        {"arrays": ArrayRecord(trained), "metrics": MetricRecord({"num-examples": 1})}
    )
    return Message(content=content, reply_to=msg)


class TimedFedAvg(FedAvg):
    """FedAvg that records when each round's messages go out and when it is aggregated."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config, grid: Grid
    ) -> Iterable[Message]:
        TIMES["round_start"].append(time.perf_counter())
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        out = super().aggregate_train(server_round, replies)
        TIMES["round_end"].append(time.perf_counter())
        return out


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    del context
    n = SETTINGS["clients"]
    strategy = TimedFedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,  # no federated evaluation (fedpeft's synthetic eval is a no-op)
        min_train_nodes=n,
        min_available_nodes=n,
    )
    initial = ArrayRecord([np.zeros(SETTINGS["floats"], dtype=np.float32)])
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=SETTINGS["rounds"])
    final = result.arrays.to_numpy_ndarrays()[0]
    TIMES["final_mean"] = [float(final.mean())]
