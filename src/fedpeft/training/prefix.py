"""Frozen-prefix caching: run the frozen lower blocks once per example, train only the top.

With LoRA in the top ``k`` blocks only (``lora.layers = k``) the embeddings and the
``L - k`` blocks below the first adapted one hold no trainable parameter, and the backbone
never changes in federated training: the hidden state an example leaves them with is the
same every epoch and every round. :class:`PrefixCache` computes it once per example (the
examples of a batch that miss, in one forward pass) and keeps it unpadded, keyed by the
example's index in the worker's tokenised training set, so every virtual client served by
the worker shares it. Each training step then runs only the top ``k`` blocks and the head,
forward and backward.

What it costs, and the one deliberate difference:

* memory: tokens x hidden size x 4 bytes per example in fp32 (2 in fp16/bf16); beyond
  ``train.prefix_cache_mb`` the least recently used examples are dropped, and computed
  again when next needed;
* the cached states are computed in eval mode under ``torch.inference_mode``: the frozen
  lower blocks apply **no dropout**, where the uncached path in training mode would
  (dropout in the top blocks and the head is unchanged). Dropout on frozen features only
  regularises the adapter above, and caching one dropout draw per example would be worse
  than none. In eval mode both paths give the same logits and gradients to float rounding
  (``tests/unit/test_prefix.py``).

Which models: :data:`PREFIX_ARCHS` maps ``config.model_type`` to the embeddings' path and
the classification head (no ``isinstance`` ladder); the blocks come from the architecture
table (:func:`fedpeft.models.registry.block_list`). Anything else — another architecture,
a causal LM, a loss other than single-label cross-entropy, a trainable parameter in the
embeddings — trains the normal way: :func:`prefix_cache_for` returns None and logs why.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedpeft.config import JobConfig
from fedpeft.errors import ModelError
from fedpeft.models.registry import block_list
from fedpeft.training.encode import EncodedData

log = logging.getLogger(__name__)

#: ``train.prefix_cache_dtype`` → the dtype cached hidden states are stored in
CACHE_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def _bert_head(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """``BertForSequenceClassification`` after its encoder: pooler (first token), dropout,
    classifier."""
    return model.classifier(model.dropout(model.base_model.pooler(hidden)))


def _roberta_head(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """``RobertaForSequenceClassification``: its head pools the first token itself."""
    return model.classifier(hidden)


@dataclass(frozen=True)
class PrefixArch:
    """How to run a sequence classifier in two parts, around its block list."""

    embeddings: str  # dotted path of the embeddings in the model with its head
    head: Callable[[Any, torch.Tensor], torch.Tensor]  # (model, last hidden state) -> logits


#: Encoders whose blocks take ``(hidden_states, attention_mask)`` with the mask built by
#: ``transformers.masking_utils.create_bidirectional_mask`` (transformers 5).
PREFIX_ARCHS: dict[str, PrefixArch] = {
    "bert": PrefixArch("bert.embeddings", _bert_head),
    "roberta": PrefixArch("roberta.embeddings", _roberta_head),
}


def _hf_model(model: Any) -> Any:
    """The transformers model inside a peft wrapper (or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _trainable(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def frozen_blocks(model: Any) -> int:
    """How many blocks from the bottom hold no trainable parameter."""
    _path, blocks = block_list(_hf_model(model))
    for i, block in enumerate(blocks):
        if _trainable(block):
            return i
    return len(blocks)


def unsupported(model: Any, data: EncodedData) -> str | None:
    """Why ``model`` cannot train from cached prefixes of ``data``; None when it can."""
    hf = _hf_model(model)
    config = hf.config
    if data.is_causal or data.labels is None:
        return "causal LM training"
    if config.model_type not in PREFIX_ARCHS:
        return f"architecture `{config.model_type}` (supported: {', '.join(PREFIX_ARCHS)})"
    if getattr(config, "is_decoder", False):
        return "a decoder configuration"
    if config.problem_type not in (None, "single_label_classification") or config.num_labels < 2:
        return "a loss other than single-label cross-entropy"
    try:
        embeddings = hf.get_submodule(PREFIX_ARCHS[config.model_type].embeddings)
        frozen = frozen_blocks(model)
    except (AttributeError, ModelError) as exc:
        return f"unexpected model layout ({exc})"
    if _trainable(embeddings):
        return "trainable embeddings"
    if frozen == 0:
        return "no frozen block below the adapter"
    return None


@contextlib.contextmanager
def _eval_mode(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """``modules`` in eval mode (no dropout) for the block; each submodule's mode after."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


class PrefixCache:
    """Hidden states after the frozen lower blocks, per example, least recently used out.

    ``source`` is the tokenised dataset the keys index (a worker's whole training set);
    ``frozen`` how many blocks from the bottom run once per example (all of them frozen);
    ``max_bytes`` caps the stored states (their tensors' bytes, on the model's device).
    :meth:`logits` is the training forward: cached prefix, then the top blocks and the
    head with autograd, in the model's current train/eval mode.
    """

    def __init__(
        self,
        model: Any,
        source: EncodedData,
        frozen: int,
        *,
        max_bytes: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        reason = unsupported(model, source)
        if reason is not None:
            raise ValueError(f"no prefix cache for this model: {reason}")
        self.model = model
        self.hf = _hf_model(model)
        self.arch = PREFIX_ARCHS[self.hf.config.model_type]
        _path, blocks = block_list(self.hf)
        if not 0 < frozen <= frozen_blocks(model):
            raise ValueError(
                f"`frozen` must be in [1, {frozen_blocks(model)}] (the blocks without a "
                f"trainable parameter), got {frozen}"
            )
        self.embeddings = self.hf.get_submodule(self.arch.embeddings)
        self.lower = list(blocks[:frozen])
        self.upper = list(blocks[frozen:])
        self.source = source
        self.max_bytes = max_bytes
        self.dtype = dtype
        self._states: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.bytes = 0  # of the stored states
        self.computed = 0  # examples whose prefix was run (misses)
        self.hits = 0  # examples served from the cache

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: int) -> bool:
        return key in self._states

    def clear(self) -> None:
        self._states.clear()
        self.bytes = 0

    def logits(self, keys: Sequence[int], input_ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class logits of examples ``keys`` of the source (a batch, in order).

        ``input_ids`` are the batch's own token ids; each must be the source's example of
        that key (a shard cut from another dataset would otherwise train on the wrong
        hidden states: that raises ``ValueError``).
        """
        states = self.states(keys, input_ids)
        weight = next(self.hf.parameters())
        hidden = torch.nn.utils.rnn.pad_sequence(states, batch_first=True).to(weight.dtype)
        lengths = torch.tensor([s.shape[0] for s in states], device=hidden.device)
        mask = (torch.arange(hidden.shape[1], device=hidden.device) < lengths[:, None]).long()
        # the top blocks see exactly what the full forward gives them: padded positions
        # are masked as keys, and only real tokens reach the head (the first one)
        bias = self._attention_bias(hidden, mask)
        for block in self.upper:
            hidden = block(hidden, bias)
        return self.arch.head(self.hf, hidden)

    def states(self, keys: Sequence[int], input_ids: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The cached hidden states (tokens x hidden) of ``keys``, computing those missing."""
        if len(keys) != len(input_ids):
            raise ValueError(f"{len(keys)} keys for {len(input_ids)} examples")
        out: list[torch.Tensor | None] = []
        missing: list[int] = []
        for row, (key, ids) in enumerate(zip(keys, input_ids, strict=True)):
            self._check(key, ids)
            state = self._states.get(key)
            if state is None:
                missing.append(row)
            else:
                self._states.move_to_end(key)
                self.hits += 1
            out.append(state)
        if missing:
            computed = self._prefix([self.source.input_ids[keys[r]] for r in missing])
            for row, state in zip(missing, computed, strict=True):
                out[row] = state
                self._put(keys[row], state)
            self.computed += len(missing)
        return [s for s in out if s is not None]

    def _check(self, key: int, ids: torch.Tensor) -> None:
        if not 0 <= key < len(self.source):
            raise ValueError(f"example {key} is not in the cached dataset ({len(self.source)})")
        ref = self.source.input_ids[key]
        if ref is not ids and not torch.equal(ref, ids):
            raise ValueError(
                f"example {key} of the batch is not example {key} of the cached dataset: "
                "the shard was not cut from the dataset the prefix cache was built on"
            )

    def _put(self, key: int, state: torch.Tensor) -> None:
        old = self._states.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes
        self._states[key] = state
        self.bytes += state.nbytes
        while self.bytes > self.max_bytes and self._states:
            _key, dropped = self._states.popitem(last=False)
            self.bytes -= dropped.nbytes

    def _attention_bias(self, hidden: torch.Tensor, mask: torch.Tensor) -> Any:
        """The mask the blocks expect, built as the model builds it (transformers 5:
        ``create_bidirectional_mask`` picks the format of ``config._attn_implementation``,
        and returns None for sdpa when nothing is padded)."""
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(
            config=self.hf.config, inputs_embeds=hidden, attention_mask=mask
        )

    def _prefix(self, seqs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Embeddings and the frozen blocks over ``seqs`` (one padded batch), in eval mode
        without autograd; each example's states unpadded, in the cache's dtype."""
        device = next(self.hf.parameters()).device
        ids = torch.nn.utils.rnn.pad_sequence(
            seqs, batch_first=True, padding_value=self.source.pad_id
        ).to(device)
        lengths = [len(s) for s in seqs]
        mask = torch.zeros(ids.shape, dtype=torch.long, device=device)
        for row, n in enumerate(lengths):
            mask[row, :n] = 1
        with torch.inference_mode(), _eval_mode([self.embeddings, *self.lower]):
            hidden = self.embeddings(input_ids=ids)  # what prefixes cost: runs once per example
            bias = self._attention_bias(hidden, mask)
            for block in self.lower:
                hidden = block(hidden, bias)
            return [hidden[row, :n].to(self.dtype, copy=True) for row, n in enumerate(lengths)]


def prefix_cache_for(model: Any, source: EncodedData, cfg: JobConfig) -> PrefixCache | None:
    """The job's prefix cache over ``source`` (keys: its example indices), or None.

    None when ``train.prefix_cache`` is off, ``lora.layers`` is 0 or the adapter trains on an
    emulator; and, with one log line saying why, when the model cannot use it
    (:func:`unsupported`): training then runs the whole model.
    """
    if not cfg.train.prefix_cache or cfg.lora.layers == 0 or cfg.adapter.on_emulator:
        return None
    reason = unsupported(model, source)
    if reason is not None:
        log.info("prefix cache off (%s): training runs the whole model", reason)
        return None
    return PrefixCache(
        model,
        source,
        frozen_blocks(model),
        max_bytes=cfg.train.prefix_cache_mb * 2**20,
        dtype=CACHE_DTYPES[cfg.train.prefix_cache_dtype],
    )
