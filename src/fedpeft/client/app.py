"""Client applications: what a (virtual) client does with a task.

:class:`LoraClientApp` loads the frozen backbone **once** and then serves any number of
virtual clients by swapping only the adapter weights, the data shard and the per-client
state. The same object runs in the in-process backend, inside each Ray worker, and behind
the gRPC client daemon.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fedpeft.adapters import load_trainable_state, trainable_state
from fedpeft.adapters.lora import find_output_layer
from fedpeft.aggregation.calibration import feature_stats
from fedpeft.client.mods import ModContext, UpdateMod, reject_nonfinite
from fedpeft.client.update import CLIENT_ERRORS, UpdateSender
from fedpeft.compression import FULL_WEIGHTS_CODEC
from fedpeft.config import JobConfig
from fedpeft.protocol.codecs import apply_downlink, downlink_codec, uplink_codec
from fedpeft.protocol.messages import ClientState, Tensors, TrainResult, TrainTask
from fedpeft.training.encode import EncodedData, encode
from fedpeft.training.generate import Generation
from fedpeft.training.loop import (
    EvalSums,
    evaluate_sums,
    finish_eval,
    model_device,
    train_local,
)
from fedpeft.training.prefix import PrefixCache, prefix_cache_for
from fedpeft.training.setup import build_adapted_model, load_job_data, set_threads

log = logging.getLogger(__name__)


def to_numpy(tensors: dict[str, torch.Tensor]) -> Tensors:
    return {k: v.numpy() for k, v in tensors.items()}


class LoraClientApp:
    """A LoRA client: one backbone in memory, any number of virtual clients."""

    def __init__(
        self,
        cfg: JobConfig,
        *,
        mods: list[UpdateMod] | None = None,
        name: str = "worker",
        label_names: list[str] | None = None,
    ) -> None:
        """``label_names``: the job's labels, when this client's data may hold only some of
        them (a daemon under label skew); the head then has one output per job label."""
        set_threads(cfg.train.threads)
        self.cfg = cfg
        self.name = name
        data = load_job_data(cfg, label_names=label_names)
        self.adapted = build_adapted_model(cfg, data.task, data.label_names)
        self.model = self.adapted.model
        self.initial = to_numpy(trainable_state(self.model))  # before any client trains
        # Tokenise once per process; clients index into it.
        self.train_data: EncodedData = encode(
            self.adapted.tokenizer, data.train, cfg.data.max_length
        )
        # lora.layers > 0: the frozen blocks below the adapter run once per example of
        # train_data, shared by every virtual client of this process (None: whole model)
        self.prefix = prefix_cache_for(self.model, self.train_data, cfg)
        self._eval_source = data.eval
        self._eval_data: EncodedData | None = None
        self._eval_prefix: PrefixCache | None = None
        self.uplink = uplink_codec(cfg.codec)
        self.downlink = downlink_codec(cfg.codec)
        self.mods: list[UpdateMod] = [reject_nonfinite, *(mods or [])]
        # update → wire (codec, DP clip, secure aggregation; its protocol secrets stay here)
        self.sender = UpdateSender(self.uplink, self.mods, cfg.codec)
        # called after every optimizer step; a daemon raises from it to abandon a task
        # its coordinator no longer wants (fedpeft.client.daemon.TaskAbandoned)
        self.on_step: Callable[[int, int, float], None] | None = None

    def initial_state(self) -> Tensors:
        return {k: v.copy() for k, v in self.initial.items()}

    def train(self, task: TrainTask) -> TrainResult:
        if task.kind == "feature_stats":
            return self.feature_stats(task)
        if task.kind.startswith("secagg_"):
            return self.secagg_stage(task)
        start = time.perf_counter()
        try:
            held = apply_downlink(self.downlink, task, self.initial)
            load_trainable_state(self.model, held, source=task.client_id)
            shard = self._shard(task)
            train_cfg = self.cfg.train
            if task.settings.lr is not None:  # the coordinator's round schedule
                train_cfg = dataclasses.replace(train_cfg, lr=task.settings.lr)
            hits = self.prefix.hits if self.prefix is not None else 0
            stats = train_local(
                self.model,
                shard,
                train_cfg,
                seed=task.seed,
                proximal_mu=task.settings.proximal_mu,
                logit_adjustment=task.settings.logit_adjustment,
                prefix=self.prefix,
                on_step=self.on_step,
            )
            local = to_numpy(trainable_state(self.model))
            delta = {k: (local[k] - held[k]).astype(np.float32) for k in held}
            # A dense downlink always sends full weights, so the held copy is only kept
            # (and shipped back in simulation) when deltas will be applied to it.
            keep = held if self.downlink.compresses else None
            state = ClientState(version=task.version, held=keep, residual=task.state.residual)
            ctx = ModContext(task.client_id, task.round, len(shard), state)
            # under secure aggregation this report travels masked inside the payload
            report = {"train_loss": stats.loss, "train_steps": float(stats.steps)}
            payload = self._encode(task, delta, ctx, report)
        except CLIENT_ERRORS as exc:  # reported, never averaged: the engine drops this client
            log.warning("client %s failed in round %s: %s", task.client_id, task.round, exc)
            return TrainResult(
                task.round, task.client_id, error=f"{type(exc).__name__}: {exc}", worker=self.name
            )
        elapsed = time.perf_counter() - start
        metrics: dict[str, Any] = {
            "train_loss": stats.loss,
            "lr": train_cfg.lr,
            "train_steps": stats.steps,
            "train_seconds": stats.seconds,
            "client_seconds": elapsed,
            "overhead_seconds": elapsed - stats.seconds,
            **ctx.info,
        }
        if stats.tokens and stats.seconds > 0:
            metrics["train_tokens_per_second"] = stats.tokens / stats.seconds
        if self.prefix is not None:  # share of examples whose frozen blocks were cached
            metrics["prefix_hit_rate"] = (self.prefix.hits - hits) / max(1, stats.examples)
        return TrainResult(
            task.round,
            task.client_id,
            # under secure aggregation the example count travels masked inside the payload
            num_examples=0 if task.secagg else len(shard),
            payload=payload,
            # under secure aggregation: nothing in the clear (UpdateSender.clear_metrics)
            metrics=self.sender.clear_metrics(task, metrics),
            state=state,
            worker=self.name,
        )

    def _encode(
        self, task: TrainTask, delta: Tensors, ctx: ModContext, report: dict[str, float]
    ) -> bytes:
        return self.sender.encode(task, delta, ctx, report)

    def secagg_stage(self, task: TrainTask) -> TrainResult:
        return self.sender.stage(task, self.name)

    def _shard(self, task: TrainTask) -> EncodedData:
        shard = self.train_data if task.indices is None else self.train_data.subset(task.indices)
        if len(shard) == 0:
            raise ValueError("empty data shard")
        return shard

    def feature_stats(self, task: TrainTask) -> TrainResult:
        """Classifier calibration (CCVR): per-class count, mean and scatter of the features
        entering the output layer, over this client's shard, under the global adapter.
        Sums of the client's data, no examples; dense fp32 on the wire — or, under secure
        aggregation, counts, feature sums and second-moment sums as this client's masked
        input (:meth:`UpdateSender.masked_stats`): the coordinator sees only the cohort's
        totals."""
        start = time.perf_counter()
        try:
            params = apply_downlink(self.downlink, task, self.initial)
            load_trainable_state(self.model, params, source=task.client_id)
            shard = self._shard(task)
            if shard.labels is None:
                raise ValueError("classifier calibration needs labelled (classification) data")
            name, layer = find_output_layer(self.model)
            captured: list[torch.Tensor] = []
            hook = layer.register_forward_hook(
                lambda _m, inputs, _out: captured.append(inputs[0].detach().float().cpu())
            )
            device = model_device(self.model)
            self.model.eval()
            try:
                with torch.no_grad():
                    for batch in shard.batches(self.cfg.train.eval_batch_size):
                        self.model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
            finally:
                hook.remove()
            features, labels = torch.cat(captured).numpy(), shard.labels.numpy()
            if task.secagg:
                payload = self.sender.masked_stats(task, name, features, labels)
            else:
                stats = feature_stats(name, features, labels, layer.out_features)
                payload = FULL_WEIGHTS_CODEC.encode(stats)
        except CLIENT_ERRORS as exc:  # reported; the engine calibrates with the other clients
            log.warning("client %s failed feature statistics: %s", task.client_id, exc)
            return TrainResult(
                task.round, task.client_id, error=f"{type(exc).__name__}: {exc}", worker=self.name
            )
        return TrainResult(
            task.round,
            task.client_id,
            # under secure aggregation the example count travels masked inside the payload
            num_examples=0 if task.secagg else len(shard),
            payload=payload,
            metrics=self.sender.clear_metrics(
                task, {"client_seconds": time.perf_counter() - start}
            ),
            worker=self.name,
        )

    def evaluate(self, params: Tensors) -> dict[str, float]:
        sums = self._evaluate_sums(params, 0, 1)
        return {} if sums is None else finish_eval([sums])

    def evaluate_part(self, params: Tensors, part: int, parts: int) -> EvalSums | None:
        """Slice ``part`` of ``parts`` of the evaluation set (alike lengths in every
        slice): a backend with several workers has each evaluate one slice at once and
        adds the sums (:func:`fedpeft.training.loop.finish_eval`). None without eval data."""
        return self._evaluate_sums(params, part, parts)

    def _evaluate_sums(self, params: Tensors, part: int, parts: int) -> EvalSums | None:
        if self._eval_source is None:
            return None
        if self._eval_data is None:
            self._eval_data = encode(
                self.adapted.tokenizer, self._eval_source, self.cfg.data.max_length
            )
            # the evaluation set never changes either: its frozen blocks run once per run
            self._eval_prefix = prefix_cache_for(self.model, self._eval_data, self.cfg)
        load_trainable_state(self.model, params)
        return evaluate_sums(
            self.model,
            self._eval_data,
            self.cfg.train.eval_batch_size,
            part=part,
            parts=parts,
            prefix=self._eval_prefix,
            # causal LMs: ROUGE-L of greedy completions (train.eval_rouge_examples; None: off)
            generation=Generation.from_config(self.cfg, self.adapted.tokenizer),
        )
