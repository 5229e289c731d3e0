"""``[train]``: the local training loop (the same loop runs centrally and on every client)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedpeft.config.checks import doc, fraction, non_negative, one_of, positive
from fedpeft.errors import ConfigError

#: Local optimizers of ``train.optimizer``. FedAvg with SGD clients is the algorithm of
#: McMahan et al. 2017 and FedOpt's client side (Reddi et al. 2021); AdamW is what
#: centralized PEFT fine-tuning uses.
OPTIMIZERS = ("adamw", "sgd")
#: ``train.prefix_cache_dtype``: how cached hidden states are stored (fedpeft.training.prefix)
PREFIX_CACHE_DTYPES = ("fp32", "fp16", "bf16")


@dataclass
class TrainConfig:
    """The local training loop (the same loop runs centrally and on every client)."""

    epochs: float = field(default=1.0, metadata=doc("passes over the local data"))
    max_steps: int | None = field(
        default=None, metadata=doc("optimizer steps; overrides epochs when set")
    )
    batch_size: int = field(default=16, metadata=doc("examples per optimizer micro-batch"))
    grad_accum: int = field(default=1, metadata=doc("micro-batches per optimizer step"))
    optimizer: str = field(
        default="adamw", metadata=doc("local optimizer: adamw or sgd (with momentum)")
    )
    lr: float = field(default=1e-3, metadata=doc("peak learning rate"))
    momentum: float = field(default=0.9, metadata=doc("SGD momentum (optimizer = sgd)"))
    weight_decay: float = field(default=0.0, metadata=doc("weight decay (decoupled for AdamW)"))
    warmup_ratio: float = field(default=0.06, metadata=doc("fraction of steps of linear warm-up"))
    schedule: str = field(default="linear", metadata=doc("decay after warm-up: linear or constant"))
    max_grad_norm: float | None = field(default=1.0, metadata=doc("gradient clipping (L2)"))
    eval_batch_size: int = field(default=64, metadata=doc("examples per evaluation batch"))
    eval_rouge_examples: int = field(
        default=0,
        metadata=doc(
            "causal LM: also complete the first N held-out prompts greedily and report "
            "ROUGE-L F1 (eval_rouge_l); slow on CPU, 0: off"
        ),
    )
    eval_max_new_tokens: int = field(
        default=64, metadata=doc("causal LM: most tokens generated per ROUGE-L prompt")
    )
    seed: int = field(default=0, metadata=doc("seed for data order, dropout and init"))
    threads: int | None = field(default=None, metadata=doc("torch CPU threads (default: all)"))
    prefix_cache: bool = field(
        default=True,
        metadata=doc(
            "with lora.layers > 0: compute the frozen blocks below the adapter once per "
            "example and reuse them every epoch and round (off: run the whole model)"
        ),
    )
    prefix_cache_mb: int = field(
        default=1024,
        metadata=doc(
            "memory for cached hidden states per process (MiB); least recently used "
            "examples are dropped beyond it"
        ),
    )
    prefix_cache_dtype: str = field(
        default="fp32",
        metadata=doc("cached hidden states: fp32 (exact), fp16 or bf16 (half the memory)"),
    )

    def __post_init__(self) -> None:
        positive("train", "epochs", self.epochs)
        if self.max_steps is not None and (
            not isinstance(self.max_steps, int) or self.max_steps <= 0
        ):
            raise ConfigError(
                "train.max_steps", f"must be a positive integer, got {self.max_steps!r}"
            )
        for name in ("batch_size", "grad_accum", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"train.{name}", f"must be a positive integer, got {value!r}")
        for name, low in (("eval_rouge_examples", 0), ("eval_max_new_tokens", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"train.{name}", f"must be an integer >= {low}, got {value!r}")
        one_of("train", "optimizer", self.optimizer, OPTIMIZERS)
        positive("train", "lr", self.lr)
        fraction("train", "momentum", self.momentum)
        non_negative("train", "weight_decay", self.weight_decay)
        fraction("train", "warmup_ratio", self.warmup_ratio)
        one_of("train", "schedule", self.schedule, ("linear", "constant"))
        if self.max_grad_norm is not None:
            positive("train", "max_grad_norm", self.max_grad_norm)
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads <= 0):
            raise ConfigError("train.threads", f"must be a positive integer, got {self.threads!r}")
        if not isinstance(self.prefix_cache, bool):
            raise ConfigError(
                "train.prefix_cache", f"must be true or false, got {self.prefix_cache!r}"
            )
        if (
            isinstance(self.prefix_cache_mb, bool)
            or not isinstance(self.prefix_cache_mb, int)
            or self.prefix_cache_mb <= 0
        ):
            raise ConfigError(
                "train.prefix_cache_mb", f"must be a positive integer, got {self.prefix_cache_mb!r}"
            )
        one_of("train", "prefix_cache_dtype", self.prefix_cache_dtype, PREFIX_CACHE_DTYPES)
