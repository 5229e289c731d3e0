"""``[model]``, ``[lora]`` and ``[adapter]``: the backbone and the adapter clients train."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedpeft.config.checks import doc, fraction, one_of, positive
from fedpeft.errors import ConfigError


@dataclass
class ModelConfig:
    """Which backbone to load and how."""

    name: str = field(
        default="minilm",
        metadata=doc("registry name (minilm, smollm2-135m), a local HF folder or a hub id"),
    )
    cache_dir: str | None = field(
        default=None, metadata=doc("where converted weights are cached ($FEDPEFT_CACHE)")
    )
    device: str = field(default="auto", metadata=doc("cpu, cuda, cuda:N or auto"))

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("model.name", "must not be empty")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(
                "model.device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            )


@dataclass
class LoraSettings:
    """LoRA hyper-parameters, passed to ``peft.LoraConfig``."""

    r: int = field(default=8, metadata=doc("LoRA rank"))
    alpha: int = field(default=16, metadata=doc("LoRA alpha (scaling = alpha / r)"))
    dropout: float = field(default=0.0, metadata=doc("dropout on the LoRA path"))
    target_modules: list[str] | None = field(
        default=None, metadata=doc("module names to adapt; default from the architecture table")
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata=doc("classification: modules trained in full; default: the architecture's head"),
    )
    freeze_a: bool = field(
        default=False,
        metadata=doc(
            "FFA-LoRA: keep lora_A at its (seeded) initialisation and train only lora_B; "
            "averaging B is then exact and A never travels"
        ),
    )
    layers: int = field(
        default=0,
        metadata=doc(
            "LoRA only in the top k transformer blocks (0 = every block); the frozen blocks "
            "below then run once per example with train.prefix_cache"
        ),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.freeze_a, bool):
            raise ConfigError("lora.freeze_a", f"must be true or false, got {self.freeze_a!r}")
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 0:
            raise ConfigError(
                "lora.layers",
                f"must be an integer >= 0 (0 = every block), got {self.layers!r}",
            )
        if not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError("lora.r", f"must be a positive integer, got {self.r!r}")
        positive("lora", "alpha", self.alpha)
        fraction("lora", "dropout", self.dropout)


@dataclass(frozen=True)
class AdapterKind:
    """What an ``adapter.kind`` is, declared once: its help text and what it implies for
    the rest of the job (the model, the client app, export and the prefix cache ask
    these, never the kind's name)."""

    help: str
    #: clients train on an emulator of the backbone (Offsite-Tuning), never the full model;
    #: the kind places its adapter blocks itself (no ``lora.layers``, no prefix cache)
    on_emulator: bool = False


#: ``adapter.kind``: LoRA on the full backbone, or Offsite-Tuning's sandwich adapter on an
#: emulator (fedpeft.adapters.offsite)
ADAPTER_KINDS: dict[str, AdapterKind] = {
    "lora": AdapterKind("LoRA on the full backbone"),
    "offsite": AdapterKind("sandwich adapter, emulator", on_emulator=True),
}
#: ``adapter.train`` (offsite): LoRA inside the adapter blocks, or the whole blocks
OFFSITE_TRAIN_MODES = ("lora", "full")


@dataclass
class AdapterConfig:
    """Which adapter clients train (``lora``, or ``offsite``: Offsite-Tuning)."""

    kind: str = field(
        default="lora",
        metadata=doc(" or ".join(f"{k} ({v.help})" for k, v in ADAPTER_KINDS.items())),
    )
    emulator: str | None = field(
        default=None,
        metadata=doc("offsite: emulator folder written by `fedpeft offsite build-emulator`"),
    )
    train: str = field(
        default="lora",
        metadata=doc(
            "offsite: train the adapter blocks with LoRA inside (lora.* settings) or whole (full)"
        ),
    )

    @property
    def on_emulator(self) -> bool:
        """Clients train on an emulator (Offsite-Tuning), not the full backbone."""
        return ADAPTER_KINDS[self.kind].on_emulator

    def __post_init__(self) -> None:
        one_of("adapter", "kind", self.kind, ADAPTER_KINDS)
        one_of("adapter", "train", self.train, OFFSITE_TRAIN_MODES)
        if self.on_emulator and not self.emulator:
            raise ConfigError(
                "adapter.emulator",
                "--adapter offsite needs an emulator folder: build one with `fedpeft offsite "
                "build-emulator --model NAME --out DIR` and pass --emulator DIR",
            )
