"""Tokenisation (once, cached) and batching with dynamic padding.

A dataset is tokenised once into lists of token ids; batches pad only to the longest
example in the batch. In simulation a worker tokenises the whole training set once and
each virtual client indexes into it, so swapping clients costs no tokenisation.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedpeft.data import ClassificationData, InstructionData
from fedpeft.errors import DataError

IGNORE_INDEX = -100  # positions the causal-LM loss skips (the prompt, the padding)


@dataclass(frozen=True)
class EncodedData:
    """Token ids per example plus a class label (classification) or per-token targets."""

    input_ids: list[torch.Tensor]
    labels: torch.Tensor | None  # classification: (n,) int64
    targets: list[torch.Tensor] | None  # causal LM: per example, IGNORE_INDEX on the prompt
    pad_id: int
    # where each example sits in the dataset this one was cut from (:meth:`subset`), so a
    # virtual client's shard can name its examples by their place in the worker's whole
    # training set (the prefix cache's keys); None: 0..n-1, this is the whole set
    origin: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def is_causal(self) -> bool:
        return self.targets is not None

    def global_indices(self) -> list[int]:
        """Each example's index in the dataset :meth:`subset` was first called on."""
        return list(self.origin) if self.origin is not None else list(range(len(self)))

    def subset(self, idx: Sequence[int] | np.ndarray) -> EncodedData:
        idx = [int(i) for i in idx]
        return EncodedData(
            [self.input_ids[i] for i in idx],
            self.labels[idx] if self.labels is not None else None,
            [self.targets[i] for i in idx] if self.targets is not None else None,
            self.pad_id,
            tuple(self.origin[i] for i in idx) if self.origin is not None else tuple(idx),
        )

    def batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        """Collate examples ``idx`` into a right-padded batch."""
        seqs = [self.input_ids[i] for i in idx]
        longest = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = s
            mask[row, : len(s)] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if self.targets is not None:
            tgt = torch.full((len(seqs), longest), IGNORE_INDEX, dtype=torch.long)
            for row, i in enumerate(idx):
                t = self.targets[i]
                tgt[row, : len(t)] = t
            out["labels"] = tgt
        elif self.labels is not None:
            out["labels"] = self.labels[list(idx)]
        return out

    def batch_indices(
        self, batch_size: int, *, generator: torch.Generator | None = None
    ) -> Iterator[list[int]]:
        """The examples of each batch of one pass, shuffled (``generator`` given) or in
        file order."""
        n = len(self)
        order = torch.randperm(n, generator=generator).tolist() if generator else list(range(n))
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]

    def batches(
        self, batch_size: int, *, generator: torch.Generator | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One pass in shuffled (``generator`` given) or file order."""
        for idx in self.batch_indices(batch_size, generator=generator):
            yield self.batch(idx)


_CACHE: OrderedDict[str, EncodedData] = OrderedDict()
_CACHE_SIZE = 8  # datasets kept tokenised per process (train + eval of a few jobs)


def _fingerprint(
    tokenizer: object, data: ClassificationData | InstructionData, max_length: int
) -> str:
    """Content hash: the same texts and labels with the same tokenizer hit the cache."""
    h = hashlib.sha256()
    h.update(str(getattr(tokenizer, "name_or_path", "")).encode())
    h.update(type(tokenizer).__name__.encode())
    h.update(f"{type(data).__name__}|{max_length}|{len(data)}".encode())
    if isinstance(data, ClassificationData):
        fields: tuple[Sequence[object], ...] = (data.texts, data.labels, data.label_names)
    else:
        fields = (data.prompts, data.responses)
    for values in fields:
        for value in values:
            h.update(str(value).encode())
            h.update(b"\x00")
        h.update(b"\x01")
    return h.hexdigest()


def encode(
    tokenizer: object, data: ClassificationData | InstructionData, max_length: int
) -> EncodedData:
    """Tokenise ``data`` (memoised per tokenizer, dataset object and length)."""
    if max_length <= 0:
        raise DataError(f"`max_length` must be > 0, got {max_length}")
    if len(data) == 0:
        raise DataError("cannot encode an empty dataset")
    key = _fingerprint(tokenizer, data, max_length)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    pad_id = int(tokenizer.pad_token_id)  # type: ignore[attr-defined]
    if isinstance(data, ClassificationData):
        enc = tokenizer(list(data.texts), truncation=True, max_length=max_length)  # type: ignore[operator]
        ids = [torch.tensor(x, dtype=torch.long) for x in enc["input_ids"]]
        result = EncodedData(ids, torch.tensor(data.labels, dtype=torch.long), None, pad_id)
    else:
        eos = getattr(tokenizer, "eos_token", None) or ""
        prompts = tokenizer(list(data.prompts), add_special_tokens=True)["input_ids"]  # type: ignore[operator]
        responses = tokenizer(  # type: ignore[operator]
            [r + eos for r in data.responses], add_special_tokens=False
        )["input_ids"]
        ids, targets = [], []
        for p, r in zip(prompts, responses, strict=True):
            seq = (p + r)[:max_length]
            tgt = ([IGNORE_INDEX] * len(p) + r)[:max_length]
            ids.append(torch.tensor(seq, dtype=torch.long))
            targets.append(torch.tensor(tgt, dtype=torch.long))
        result = EncodedData(ids, None, targets, pad_id)
    _CACHE[key] = result
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result
