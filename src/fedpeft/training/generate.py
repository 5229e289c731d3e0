"""Greedy generation and ROUGE-L: what a causal-LM job's held-out evaluation adds to
perplexity, and what ``fedpeft generate`` prints.

ROUGE-L is Google's ``rouge-score`` (the reference implementation of ROUGE-1.5.5's
LCS-based F-measure, with its Porter stemmer), never a re-implementation. Generation is
greedy (deterministic: the same adapter gives the same completions on every worker) and
batched with left padding, so a batch's prompts all end where generation starts.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedpeft.errors import ConfigError
from fedpeft.training.encode import IGNORE_INDEX, EncodedData

__all__ = [
    "Generation",
    "find_adapter",
    "generate_texts",
    "load_for_generation",
    "rouge_l",
    "rouge_sums",
]


@dataclass(frozen=True)
class Generation:
    """What a held-out evaluation generates: greedy completions of the first ``examples``
    held-out prompts, at most ``max_new_tokens`` each, scored by ROUGE-L F1 against the
    reference responses."""

    tokenizer: Any
    examples: int
    max_new_tokens: int = 64
    batch_size: int = 16

    @classmethod
    def from_config(cls, cfg: Any, tokenizer: Any) -> Generation | None:
        """From ``train.eval_rouge_examples`` / ``train.eval_max_new_tokens`` of a job's
        config; None when off (0 examples)."""
        train = cfg.train
        if not train.eval_rouge_examples:
            return None
        return cls(
            tokenizer, train.eval_rouge_examples, train.eval_max_new_tokens, train.eval_batch_size
        )


def _scorer() -> Any:
    if importlib.util.find_spec("rouge_score") is None:
        raise ConfigError(
            "train.eval_rouge_examples",
            "ROUGE-L needs Google's rouge-score package: pip install rouge-score==0.1.2",
        )
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 (0..1) of each prediction against its reference."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = _scorer()
    return [
        float(scorer.score(ref, pred)["rougeL"].fmeasure)
        for pred, ref in zip(predictions, references, strict=True)
    ]


@torch.inference_mode()
def generate_ids(
    model: torch.nn.Module,
    prompts: Sequence[torch.Tensor],
    *,
    pad_id: int,
    eos_id: int | None,
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[list[int]]:
    """Greedy continuations (new token ids only, cut at EOS) of token-id ``prompts``."""
    if max_new_tokens <= 0:
        raise ConfigError("max_new_tokens", f"must be a positive integer, got {max_new_tokens}")
    model.eval()
    device = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in prompts]
    # alike lengths batch together: less left padding to run through the model
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        longest = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), longest), dtype=torch.long)
        for row, i in enumerate(idx):  # left padding: every prompt ends at column -1
            n = len(prompts[i])
            ids[row, longest - n :] = prompts[i]
            mask[row, longest - n :] = 1
        generated = model.generate(  # type: ignore[operator]
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
        for row, i in enumerate(idx):
            new = generated[row, longest:].tolist()
            if eos_id is not None and eos_id in new:
                new = new[: new.index(eos_id)]
            out[i] = new
    return out


def generate_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> list[str]:
    """Greedy completions of text ``prompts`` (already in the model's prompt format)."""
    ids = [
        torch.tensor(tokenizer(p, add_special_tokens=True)["input_ids"], dtype=torch.long)
        for p in prompts
    ]
    new = generate_ids(
        model,
        ids,
        pad_id=int(tokenizer.pad_token_id),
        eos_id=tokenizer.eos_token_id,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in new]


def rouge_sums(
    model: torch.nn.Module,
    data: EncodedData,
    generation: Generation,
    *,
    part: int = 0,
    parts: int = 1,
) -> tuple[float, int]:
    """``(sum of ROUGE-L F1, count)`` over slice ``part`` of ``parts`` of the first
    ``generation.examples`` examples of ``data`` (a causal-LM held-out set: the prompt is
    where the targets are ignored, the reference is the target response)."""
    if data.targets is None:
        raise ValueError("ROUGE-L needs causal-LM (instruction) data")
    chosen = list(range(min(generation.examples, len(data))))[part::parts]
    if not chosen:
        return 0.0, 0
    tok = generation.tokenizer
    prompts, references = [], []
    for i in chosen:
        target = data.targets[i]
        answer = target != IGNORE_INDEX
        start = int(answer.nonzero()[0]) if bool(answer.any()) else len(target)
        prompts.append(data.input_ids[i][:start])
        references.append(tok.decode(target[answer].tolist(), skip_special_tokens=True).strip())
    new = generate_ids(
        model,
        prompts,
        pad_id=data.pad_id,
        eos_id=tok.eos_token_id,
        max_new_tokens=generation.max_new_tokens,
        batch_size=generation.batch_size,
    )
    predictions = [tok.decode(t, skip_special_tokens=True).strip() for t in new]
    scores = rouge_l(predictions, references)
    return float(sum(scores)), len(scores)


def find_adapter(source: str | Path) -> tuple[Path, dict[str, Any]]:
    """The PEFT adapter folder ``source`` names and what it says about itself.

    ``source`` is an exported adapter (``fedpeft export``, or ``<run>/adapter`` that a
    federated run writes) or a run folder holding one in ``adapter/``. Returns the folder
    and its ``fedpeft.json`` (or, for a folder PEFT alone wrote, the base model from
    ``adapter_config.json``)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError("RUN_OR_ADAPTER", f"{path} does not exist")
    for folder in (path, path / "adapter"):
        if (folder / "adapter_config.json").is_file():
            info_file = folder / "fedpeft.json"
            if info_file.is_file():
                info = json.loads(info_file.read_text())
            else:
                peft_cfg = json.loads((folder / "adapter_config.json").read_text())
                info = {"base_model": peft_cfg.get("base_model_name_or_path")}
            if info.get("task", "causal_lm") != "causal_lm":
                raise ConfigError(
                    "RUN_OR_ADAPTER",
                    f"{folder} adapts a {info['task']} model; generation needs a causal LM",
                )
            if not info.get("base_model"):
                raise ConfigError("RUN_OR_ADAPTER", f"{folder} does not name its base model")
            return folder, info
    raise ConfigError(
        "RUN_OR_ADAPTER",
        f"{path} holds no PEFT adapter (no adapter_config.json in it or in {path / 'adapter'}); "
        "a run folder has one once its job finished (or run `fedpeft export RUN OUT`)",
    )


def load_for_generation(source: str | Path, device: str = "cpu") -> tuple[Any, Any, Path]:
    """``(model, tokenizer, adapter folder)``: the base model with the adapter of
    ``source`` (see :func:`find_adapter`), loaded as a user would (``AutoModelForCausalLM``
    + ``PeftModel.from_pretrained``), in eval mode on ``device``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedpeft.models import load_tokenizer, quiet_transformers, resolve_device

    folder, info = find_adapter(source)
    base_path = str(info["base_model"])
    with quiet_transformers():
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(folder))
    model.to(resolve_device(device))
    model.eval()
    return model, load_tokenizer(base_path), folder
