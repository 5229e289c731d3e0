"""The local training loop and evaluation — the same code centrally and on every client.

Read it top to bottom: seed, optimizer over the trainable (adapter) parameters only,
warm-up + decay schedule, gradient accumulation and clipping, an optional FedProx term.
What costs time is the forward/backward through the frozen backbone; everything else
here is bookkeeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedpeft.config import TrainConfig
from fedpeft.training.encode import IGNORE_INDEX, EncodedData


@dataclass(frozen=True)
class TrainStats:
    steps: int
    examples: int  # examples seen (with repetition over epochs)
    loss: float  # mean training loss over the run
    seconds: float


def planned_steps(n_examples: int, cfg: TrainConfig) -> int:
    """Optimizer steps: ``max_steps`` when set (it overrides epochs, as in HF's Trainer),
    else ``cfg.epochs`` passes over ``n_examples``."""
    if cfg.max_steps:
        return cfg.max_steps
    micro_per_epoch = math.ceil(n_examples / cfg.batch_size)
    return max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))


def lr_lambda(total: int, cfg: TrainConfig) -> Callable[[int], float]:
    warmup = int(cfg.warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def label_log_prior(data: EncodedData, model: torch.nn.Module) -> torch.Tensor:
    """log π of the labels in ``data`` over the model's classes, add-one smoothed."""
    if data.labels is None:
        raise ValueError("a label prior needs classification data")
    config = getattr(model, "config", None)
    classes = int(getattr(config, "num_labels", 0)) or int(data.labels.max()) + 1
    counts = torch.bincount(data.labels, minlength=classes).double()
    return torch.log((counts + 1.0) / (counts.sum() + classes)).float()


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The local optimizer of ``cfg.optimizer``, fresh (no state carried between calls)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_local(
    model: torch.nn.Module,
    data: EncodedData,
    cfg: TrainConfig,
    *,
    seed: int,
    proximal_mu: float = 0.0,
    logit_adjustment: float = 0.0,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainStats:
    """Train the trainable parameters of ``model`` on ``data``; returns what was done.

    ``on_step(step, total, loss)`` is called after each optimizer step (progress bars).
    With ``proximal_mu > 0`` the FedProx term μ/2·||w − w_start||² keeps the adapter
    near the one it started from (the global adapter, in federation).
    With ``logit_adjustment = τ > 0`` (classification) the loss is the cross-entropy of
    ``logits + τ·log π``, π being the label distribution of ``data`` (Laplace-smoothed):
    the logit-adjusted loss of Menon et al. 2021 that FedLC (Zhang et al. 2022) uses
    against label-skewed clients; a client then stops pushing its own majority class.
    Evaluation uses the plain logits.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)  # dropout
    generator = torch.Generator().manual_seed(seed)  # data order
    device = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else None
    optimizer = make_optimizer(params, cfg)
    total = planned_steps(len(data), cfg)
    log_prior = (
        label_log_prior(data, model).to(device)
        if logit_adjustment > 0 and data.labels is not None
        else None
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, cfg))

    model.train()
    optimizer.zero_grad(set_to_none=True)  # gradients left on the model are not ours to add
    step = micro = examples = 0
    loss_sum = 0.0
    while step < total:
        for batch in data.batches(cfg.batch_size, generator=generator):
            batch = {k: v.to(device) for k, v in batch.items()}
            if log_prior is None:
                loss = model(**batch).loss  # forward + loss: most of the time goes here
            else:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                logits = model(**inputs).logits + logit_adjustment * log_prior
                loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                loss = loss + 0.5 * proximal_mu * prox
            (loss / cfg.grad_accum).backward()
            loss_sum += float(loss.detach())
            examples += batch["input_ids"].shape[0]
            micro += 1
            if micro % cfg.grad_accum:
                continue
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if on_step is not None:
                on_step(step, total, loss_sum / micro)
            if step >= total:
                break
    model.eval()
    return TrainStats(step, examples, loss_sum / max(1, micro), time.perf_counter() - start)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: EncodedData, batch_size: int = 64) -> dict[str, float]:
    """Classification: accuracy, macro-F1, loss. Causal LM: loss and perplexity."""
    model.eval()
    device = model_device(model)
    if data.is_causal:
        nll = tokens = 0.0
        for batch in data.batches(batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            shift_logits = logits[:, :-1].float()
            shift_labels = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]),
                shift_labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            nll += float(loss)
            tokens += float((shift_labels != IGNORE_INDEX).sum())
        mean = nll / max(tokens, 1.0)
        return {"eval_loss": mean, "eval_perplexity": math.exp(min(mean, 50.0))}

    preds, golds, loss_sum = [], [], 0.0
    for batch in data.batches(batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        loss_sum += float(out.loss) * batch["labels"].shape[0]
        preds.append(out.logits.argmax(-1).cpu())
        golds.append(batch["labels"].cpu())
    pred = torch.cat(preds)
    gold = torch.cat(golds)
    return {
        "eval_loss": loss_sum / len(gold),
        "eval_accuracy": float((pred == gold).float().mean()),
        "eval_macro_f1": macro_f1(pred, gold),
    }


def macro_f1(pred: torch.Tensor, gold: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 over the classes present in gold or pred."""
    classes = torch.unique(torch.cat([pred, gold]))
    scores = []
    for c in classes:
        tp = float(((pred == c) & (gold == c)).sum())
        fp = float(((pred == c) & (gold != c)).sum())
        fn = float(((pred != c) & (gold == c)).sum())
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return sum(scores) / len(scores)


@torch.no_grad()
def predict(model: torch.nn.Module, data: EncodedData, batch_size: int = 64) -> torch.Tensor:
    """Logits for every example (classification), in order."""
    model.eval()
    device = model_device(model)
    out = []
    for batch in data.batches(batch_size):
        batch.pop("labels", None)
        out.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    return torch.cat(out)
