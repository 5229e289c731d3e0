"""The local training loop and evaluation — the same code centrally and on every client.

Read it top to bottom: seed, optimizer over the trainable (adapter) parameters only,
warm-up + decay schedule, gradient accumulation and clipping, an optional FedProx term.
What costs time is the forward/backward through the frozen backbone (with LoRA in the top
blocks only, a prefix cache runs the frozen blocks below once per example:
:mod:`fedpeft.training.prefix`); everything else here is bookkeeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from fedpeft.config import TrainConfig
from fedpeft.training.encode import IGNORE_INDEX, EncodedData

if TYPE_CHECKING:
    from fedpeft.training.generate import Generation
    from fedpeft.training.prefix import PrefixCache


@dataclass(frozen=True)
class TrainStats:
    steps: int
    examples: int  # examples seen (with repetition over epochs)
    loss: float  # mean training loss over the run
    seconds: float
    tokens: int = 0  # non-padding input tokens run through the model (tokens/s = tokens/seconds)


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
    prefix: PrefixCache | None = None,
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
    With a ``prefix`` cache (classification; built on the dataset ``data`` was cut from,
    see :meth:`EncodedData.global_indices`) the frozen lower blocks run once per example
    and each step runs the top blocks and the head only; the loss is the same
    cross-entropy, but the frozen blocks apply no dropout (:mod:`fedpeft.training.prefix`).
    """
    if prefix is not None and (prefix.model is not model or data.labels is None):
        raise ValueError("a prefix cache needs classification data and its own model")
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
    keys = data.global_indices() if prefix is not None else []
    step = micro = examples = tokens = 0
    loss_sum = 0.0
    while step < total:
        for idx in data.batch_indices(cfg.batch_size, generator=generator):
            batch = {k: v.to(device) for k, v in data.batch(idx).items()}
            if prefix is None and log_prior is None:
                loss = model(**batch).loss  # forward + loss: most of the time goes here
            else:
                if prefix is not None:  # cached frozen blocks; the top ones and the head run
                    ids = [data.input_ids[i] for i in idx]
                    logits = prefix.logits([keys[i] for i in idx], ids)
                else:
                    inputs = {k: v for k, v in batch.items() if k != "labels"}
                    logits = model(**inputs).logits
                if log_prior is not None:
                    logits = logits + logit_adjustment * log_prior
                loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                loss = loss + 0.5 * proximal_mu * prox
            (loss / cfg.grad_accum).backward()
            loss_sum += float(loss.detach())
            examples += batch["input_ids"].shape[0]
            tokens += int(batch["attention_mask"].sum())
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
    seconds = time.perf_counter() - start
    return TrainStats(step, examples, loss_sum / max(1, micro), seconds, tokens)


@dataclass
class EvalSums:
    """What one slice of an evaluation set contributes: sums that add up exactly across
    slices, so several workers can each evaluate a part (see :func:`finish_eval`)."""

    loss_sum: float = 0.0
    count: float = 0.0  # examples (classification) or target tokens (causal LM)
    pred: list[int] = field(default_factory=list)  # classification only
    gold: list[int] = field(default_factory=list)
    causal: bool = False
    rouge_sum: float = 0.0  # causal LM with generation: sum of ROUGE-L F1 (0..1)
    rouge_count: int = 0


def eval_order(data: EncodedData, part: int = 0, parts: int = 1) -> list[int]:
    """Examples sorted by length (batches then pad little: about half the padded tokens
    of file order on SST-2), dealt round-robin into ``parts`` slices of alike lengths."""
    if not 0 <= part < parts:
        raise ValueError(f"part must be in [0, {parts}), got {part}")
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    return order[part::parts]


@torch.inference_mode()
def evaluate_sums(
    model: torch.nn.Module,
    data: EncodedData,
    batch_size: int = 64,
    *,
    part: int = 0,
    parts: int = 1,
    prefix: PrefixCache | None = None,
    generation: Generation | None = None,
) -> EvalSums:
    """Evaluate slice ``part`` of ``parts`` of ``data`` (see :func:`eval_order`).

    With ``generation`` (causal LM) the slice's share of the first ``generation.examples``
    examples is also completed greedily and scored by ROUGE-L (:mod:`.generate`): on CPU
    this costs far more than the perplexity pass (one forward per new token).

    With a ``prefix`` cache built on ``data`` (classification, LoRA in the top blocks
    only) the frozen blocks run once per example for the whole run: every later
    evaluation runs the top blocks and the head only."""
    model.eval()
    device = model_device(model)
    order = eval_order(data, part, parts)
    sums = EvalSums(causal=data.is_causal)
    keys = data.global_indices() if prefix is not None else []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = data.batch(idx)
        batch = {k: v.to(device) for k, v in batch.items()}
        if data.is_causal:
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
            sums.loss_sum += float(loss)
            sums.count += float((shift_labels != IGNORE_INDEX).sum())
            continue
        if prefix is not None:  # cached frozen blocks; the top ones and the head run
            logits = prefix.logits([keys[i] for i in idx], [data.input_ids[i] for i in idx])
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        else:
            out = model(**batch)
            logits, loss = out.logits, out.loss
        n = batch["labels"].shape[0]
        sums.loss_sum += float(loss) * n
        sums.count += n
        sums.pred.extend(logits.argmax(-1).cpu().tolist())
        sums.gold.extend(batch["labels"].cpu().tolist())
    if generation is not None and data.is_causal:
        from fedpeft.training.generate import rouge_sums

        sums.rouge_sum, sums.rouge_count = rouge_sums(
            model, data, generation, part=part, parts=parts
        )
    return sums


def finish_eval(parts: list[EvalSums]) -> dict[str, float]:
    """Classification: accuracy, macro-F1, loss. Causal LM: loss and perplexity (of the
    response tokens), and ``eval_rouge_l`` (ROUGE-L F1 in points, 0..100) where generated."""
    if not parts:
        return {}
    loss_sum = sum(p.loss_sum for p in parts)
    count = sum(p.count for p in parts)
    if parts[0].causal:
        mean = loss_sum / max(count, 1.0)
        out = {"eval_loss": mean, "eval_perplexity": math.exp(min(mean, 50.0))}
        generated = sum(p.rouge_count for p in parts)
        if generated:
            out["eval_rouge_l"] = 100.0 * sum(p.rouge_sum for p in parts) / generated
        return out
    pred = torch.tensor([x for p in parts for x in p.pred], dtype=torch.long)
    gold = torch.tensor([x for p in parts for x in p.gold], dtype=torch.long)
    if len(gold) == 0:
        return {}
    return {
        "eval_loss": loss_sum / len(gold),
        "eval_accuracy": float((pred == gold).float().mean()),
        "eval_macro_f1": macro_f1(pred, gold),
    }


def evaluate(
    model: torch.nn.Module,
    data: EncodedData,
    batch_size: int = 64,
    *,
    generation: Generation | None = None,
) -> dict[str, float]:
    """Classification: accuracy, macro-F1, loss. Causal LM: loss and perplexity (and
    ROUGE-L with ``generation``)."""
    return finish_eval([evaluate_sums(model, data, batch_size, generation=generation)])


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
