"""Offsite-Tuning (Xiao, Lin, Han 2023, arXiv:2302.04870): emulator + sandwich adapter.

The model owner (the coordinator) keeps a backbone of ``L`` transformer blocks. The
**adapter** is the first ``a`` and last ``a`` blocks, trained by the clients either as
whole blocks (``adapter.train = "full"``, the paper's default) or with LoRA inside them
(``"lora"``: peft's ``layers_to_transform``). The ``L - 2a`` middle blocks are the owner's
secret: clients get an **emulator** in which the middle is compressed by uniform layer
drop (:func:`uniform_middle`: ``k`` evenly spaced middle blocks are kept, as in the
paper's ``uniform_choose_layers``), optionally distilled on public text
(:func:`distill_emulator`: MSE between the emulator's and the true middle's output hidden
states, normalised by the teacher's mean square, plus the next-token loss for causal LMs).

**Names.** The emulator's kept blocks are registered under their *full-model* index
(:class:`KeptBlocks`), so every parameter of the emulator is named exactly as in the full
model (``bert.encoder.layer.5.attention...``): the adapter state a client trains on the
emulator loads into the full backbone by name (:func:`load_trainable_state`), and peft
gets the same ``layers_to_transform`` on both. Dropped blocks simply have no names.

**Artifact.** :func:`build_emulator` writes a folder that transformers loads by itself
(``config.json`` with ``num_hidden_layers`` = the emulator's block count, contiguous
``model.safetensors`` holding only embeddings, the adapter blocks, the kept middle blocks
and the final norm/pooler, the tokenizer) plus ``offsite.json``
(:data:`EMULATOR_FILE`): which full-model block each emulator block is, the adapter
layout, and the SHA-256 of the backbone's weight files, checked against the coordinator's
backbone before a job runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fedpeft.config import LoraSettings
from fedpeft.errors import ConfigError, ModelError
from fedpeft.models.registry import (
    ARCHITECTURES,
    Task,
    _quiet_transformers,
    arch_spec,
    block_list,
    load_backbone,
    load_tokenizer,
    resolve_model_path,
)

if TYPE_CHECKING:
    from fedpeft.config import JobConfig
    from fedpeft.training.setup import AdaptedModel

log = logging.getLogger(__name__)

EMULATOR_FILE = "offsite.json"
EMULATOR_FORMAT = "fedpeft-offsite-emulator"
EMULATOR_VERSION = 1
#: how clients train the adapter blocks (``adapter.train``)
TRAIN_MODES = ("lora", "full")
#: the public text the emulator is distilled on unless told otherwise (offline, built in)
DEFAULT_DISTILL_DATA = "reuters-r8"


# ---- which blocks ------------------------------------------------------------------------
def _round_half_up(num: int, den: int) -> int:
    """``round(num / den)`` with halves rounded up, in exact integer arithmetic."""
    return (2 * num + den) // (2 * den)


def uniform_middle(num_layers: int, adapter_blocks: int, keep: int) -> tuple[int, ...]:
    """Full-model indices of the ``keep`` middle blocks an emulator keeps (uniform drop).

    The middle is blocks ``a .. L-a-1`` (``M = L - 2a`` of them). Kept are the middle's
    positions ``round(i * (M-1) / (keep-1))`` for ``i = 0 .. keep-1`` (halves up): evenly
    spaced, the first and the last middle block always among them, as in the paper's
    ``uniform_choose_layers``; ``keep = 1`` keeps the centre one.
    """
    check_adapter_blocks(num_layers, adapter_blocks)
    middle = num_layers - 2 * adapter_blocks
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= middle:
        raise ConfigError(
            "--keep-middle",
            f"must be an integer in [1, {middle}] (the middle has L - 2a = {num_layers} - "
            f"2*{adapter_blocks} = {middle} blocks), got {keep!r}",
        )
    if keep == 1:
        positions = [_round_half_up(middle - 1, 2)]
    else:
        positions = [_round_half_up(i * (middle - 1), keep - 1) for i in range(keep)]
    return tuple(adapter_blocks + p for p in positions)


def keep_for_ratio(num_layers: int, adapter_blocks: int, ratio: float) -> int:
    """Middle blocks kept for a ``ratio`` in (0, 1]: ``round(ratio * M)``, at least one."""
    check_adapter_blocks(num_layers, adapter_blocks)
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
        raise ConfigError("--keep-ratio", f"must be in (0, 1], got {ratio!r}")
    middle = num_layers - 2 * adapter_blocks
    return max(1, min(middle, math.floor(ratio * middle + 0.5)))


def check_adapter_blocks(num_layers: int, adapter_blocks: int) -> None:
    """``a`` blocks at each end must leave at least one middle block."""
    most = (num_layers - 1) // 2
    if (
        isinstance(adapter_blocks, bool)
        or not isinstance(adapter_blocks, int)
        or not 1 <= adapter_blocks <= most
    ):
        raise ConfigError(
            "--adapter-blocks",
            f"must be an integer in [1, {most}] for a backbone of {num_layers} blocks "
            f"(2a < L leaves a middle to compress), got {adapter_blocks!r}",
        )


@dataclass(frozen=True)
class OffsiteLayout:
    """Which full-model blocks are adapter, kept middle and dropped middle."""

    num_layers: int
    adapter_blocks: int
    kept_middle: tuple[int, ...]

    def __post_init__(self) -> None:
        check_adapter_blocks(self.num_layers, self.adapter_blocks)
        lo, hi = self.adapter_blocks, self.num_layers - self.adapter_blocks
        kept = list(self.kept_middle)
        if not kept or kept != sorted(set(kept)) or kept[0] < lo or kept[-1] >= hi:
            raise ModelError(
                f"kept middle blocks {kept} are not increasing indices in the middle "
                f"[{lo}, {hi - 1}]"
            )

    @classmethod
    def uniform(cls, num_layers: int, adapter_blocks: int, keep: int) -> OffsiteLayout:
        return cls(num_layers, adapter_blocks, uniform_middle(num_layers, adapter_blocks, keep))

    @property
    def adapter_indices(self) -> tuple[int, ...]:
        a, n = self.adapter_blocks, self.num_layers
        return (*range(a), *range(n - a, n))

    @property
    def emulator_blocks(self) -> tuple[int, ...]:
        """Full-model index of each emulator block, in emulator order."""
        a, n = self.adapter_blocks, self.num_layers
        return (*range(a), *self.kept_middle, *range(n - a, n))

    @property
    def dropped(self) -> tuple[int, ...]:
        a, n = self.adapter_blocks, self.num_layers
        return tuple(i for i in range(a, n - a) if i not in self.kept_middle)

    def to_json(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "adapter_blocks": self.adapter_blocks,
            "adapter_indices": list(self.adapter_indices),
            "kept_middle": list(self.kept_middle),
            "dropped_middle": list(self.dropped),
            "emulator_blocks": list(self.emulator_blocks),
        }


# ---- block lists -------------------------------------------------------------------------
class KeptBlocks(torch.nn.ModuleList):
    """The emulator's blocks, registered under their full-model index.

    Iteration and integer indexing are positional (what the transformers forward passes
    use); parameter and module *names* carry the full-model index, so an adapter trained
    on the emulator is named exactly as in the full backbone.
    """

    def __init__(self, blocks: Sequence[torch.nn.Module], full_indices: Sequence[int]) -> None:
        super().__init__()
        if len(blocks) != len(full_indices):
            raise ModelError(f"{len(blocks)} blocks for {len(full_indices)} indices")
        for index, block in zip(full_indices, blocks, strict=True):
            self.add_module(str(index), block)

    def __getitem__(self, idx: Any) -> Any:
        modules = list(self._modules.values())
        if isinstance(idx, slice):
            return torch.nn.ModuleList(modules[idx])  # type: ignore[arg-type]
        return modules[idx]

    @property
    def full_indices(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self._modules)


def _set_block_list(model: Any, path: str, blocks: torch.nn.ModuleList) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, blocks)


def _set_num_layers(config: Any, kept: Sequence[int]) -> None:
    """Config of a model reduced to blocks ``kept`` (per-layer lists follow)."""
    full = int(config.num_hidden_layers)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == full:
        config.layer_types = [layer_types[i] for i in kept]
    config.num_hidden_layers = len(kept)


def drop_blocks(model: Any, layout: OffsiteLayout) -> Any:
    """Reduce a full model, in place, to the emulator's blocks (contiguous, as saved)."""
    path, blocks = block_list(model)
    if len(blocks) != layout.num_layers:
        raise ModelError(f"model has {len(blocks)} blocks, layout is for {layout.num_layers}")
    kept = layout.emulator_blocks
    _set_block_list(model, path, torch.nn.ModuleList([blocks[i] for i in kept]))
    _set_num_layers(model.config, kept)
    return model


def reindex_blocks(model: Any, layout: OffsiteLayout) -> Any:
    """Register a loaded emulator's blocks under their full-model indices (in place)."""
    path, blocks = block_list(model)
    if len(blocks) != len(layout.emulator_blocks):
        raise ModelError(
            f"emulator has {len(blocks)} blocks, its layout lists {len(layout.emulator_blocks)}"
        )
    _set_block_list(model, path, KeptBlocks(list(blocks), layout.emulator_blocks))
    return model


# ---- the adapter -------------------------------------------------------------------------
def apply_offsite_adapter(
    model: Any, layout: OffsiteLayout, mode: str, lora: LoraSettings, task: Task
) -> Any:
    """Make the adapter blocks (and a classification head) the only trainable parameters.

    ``mode = "lora"``: LoRA (``lora.r``, ``lora.alpha``, the architecture's targets) in the
    adapter blocks only, through peft's ``layers_to_transform``; ``"full"``: the whole
    adapter blocks. Works the same on the emulator and on the full backbone, which name
    their blocks alike (:class:`KeptBlocks`), so both produce the same tensor names.
    """
    if mode not in TRAIN_MODES:
        raise ConfigError("adapter.train", f"must be one of {list(TRAIN_MODES)}, got {mode!r}")
    spec = arch_spec(model.config.model_type)
    path, _blocks = block_list(model)
    head: list[str] = []
    if task is Task.CLASSIFICATION:
        wanted = lora.modules_to_save if lora.modules_to_save is not None else spec.head_modules
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        head = [h for h in wanted if h in names]
    if mode == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules or spec.lora_targets),
            layers_to_transform=list(layout.adapter_indices),
            layers_pattern=path.rsplit(".", 1)[-1],
            modules_to_save=head or None,
            task_type=TaskType.SEQ_CLS if task is Task.CLASSIFICATION else TaskType.CAUSAL_LM,
        )
        return get_peft_model(model, config)
    model.requires_grad_(False)
    trainable = [f"{path}.{i}" for i in layout.adapter_indices]
    for name, module in model.named_modules():
        if name in trainable or (head and name.rsplit(".", 1)[-1] in head):
            module.requires_grad_(True)
    return model


# ---- hashing and the artifact -------------------------------------------------------------
def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ModelError(f"no weight files (*.safetensors, pytorch_model*.bin) in {folder}")
    return files


def backbone_sha256(path: str) -> str:
    """SHA-256 over the backbone's weight files (``*.safetensors``, else ``*.bin``), in
    name order. ``path`` is a local folder or, where a hub is reachable, a hub id."""
    folder = Path(path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:
            folder = Path(
                snapshot_download(path, allow_patterns=["*.safetensors", "*.bin", "*.json"])
            )
        except Exception as exc:  # any hub failure: offline, unknown id, network
            raise ModelError(f"cannot fetch `{path}` to hash its weights: {exc}") from exc
    digest = hashlib.sha256()
    for file in _weight_files(folder):
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class EmulatorInfo:
    """What ``offsite.json`` says about an emulator folder."""

    folder: Path
    layout: OffsiteLayout
    model_type: str
    backbone: str
    backbone_sha256: str
    distillation: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": EMULATOR_FORMAT,
            "version": EMULATOR_VERSION,
            "model_type": self.model_type,
            "blocks_path": arch_spec(self.model_type).blocks_path,
            "backbone": self.backbone,
            "backbone_sha256": self.backbone_sha256,
            **self.layout.to_json(),
            "distillation": self.distillation,
        }


def read_emulator(folder: str | Path, field: str = "--emulator") -> EmulatorInfo:
    """Read and check an emulator folder; problems name ``field`` and the file."""
    folder = Path(folder).expanduser()
    meta_file = folder / EMULATOR_FILE
    if not meta_file.is_file():
        raise ConfigError(
            field,
            f"{folder} is not an Offsite-Tuning emulator (no {EMULATOR_FILE}); build one "
            "with `fedpeft offsite build-emulator`",
        )
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != EMULATOR_FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, not {EMULATOR_FORMAT!r}")
        if meta.get("version") != EMULATOR_VERSION:
            raise ValueError(f"version {meta.get('version')!r} (this fedpeft reads 1)")
        layout = OffsiteLayout(
            int(meta["num_layers"]), int(meta["adapter_blocks"]), tuple(meta["kept_middle"])
        )
        model_type = str(meta["model_type"])
        info = EmulatorInfo(
            folder.resolve(),
            layout,
            model_type,
            str(meta["backbone"]),
            str(meta["backbone_sha256"]),
            meta.get("distillation"),
        )
    except (ValueError, KeyError, TypeError, ConfigError, ModelError) as exc:
        raise ConfigError(field, f"{meta_file} is malformed: {exc}") from exc
    if model_type not in ARCHITECTURES:
        raise ConfigError(field, f"{meta_file}: unknown architecture `{model_type}`")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(field, f"{config_file} is missing")
    blocks = json.loads(config_file.read_text()).get("num_hidden_layers")
    if blocks is None:
        blocks = json.loads(config_file.read_text()).get("n_layer")
    if blocks != len(layout.emulator_blocks):
        raise ConfigError(
            field,
            f"{config_file} has {blocks} blocks but {EMULATOR_FILE} lists "
            f"{len(layout.emulator_blocks)}",
        )
    return info


def check_backbone(info: EmulatorInfo, model_path: str, field: str = "--emulator") -> None:
    """The emulator must have been built from this very backbone (same weight files)."""
    actual = backbone_sha256(model_path)
    if actual != info.backbone_sha256:
        raise ConfigError(
            field,
            f"{info.folder / EMULATOR_FILE} was built for backbone `{info.backbone}` "
            f"(sha256 {info.backbone_sha256[:12]}…), but the model is `{model_path}` "
            f"(sha256 {actual[:12]}…); pass the matching --model or rebuild the emulator",
        )


def _load_full(path: str) -> Any:
    """The pretrained backbone as its checkpoint stores it (an LM head if decoder)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the config of `{path}`: {exc}") from exc
    if config.model_type not in ARCHITECTURES:
        raise ConfigError(
            "--model",
            f"`{path}` is a `{config.model_type}` model; Offsite-Tuning knows the block list of "
            f"{sorted(ARCHITECTURES)} only",
        )
    cls = AutoModel if arch_spec(config.model_type).encoder_only else AutoModelForCausalLM
    try:
        with _quiet_transformers():
            return cls.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model `{path}`: {exc}") from exc


@dataclass(frozen=True)
class DistillSettings:
    """Distillation of the emulator's kept middle blocks on public text."""

    steps: int = 0
    data: str = DEFAULT_DISTILL_DATA
    lr: float = 1e-4
    batch_size: int = 16
    max_length: int = 64
    lm_weight: float = 1.0  # causal LMs: weight of the next-token loss next to the MSE
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigError("--distill-steps", f"must be an integer >= 0, got {self.steps!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError("--distill-lr", f"must be > 0, got {self.lr!r}")
        for name in ("batch_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"--distill-{name.replace('_', '-')}", f"must be > 0: {value!r}")
        if not (self.lm_weight >= 0 and math.isfinite(self.lm_weight)):
            raise ConfigError("--distill-lm-weight", f"must be >= 0, got {self.lm_weight!r}")


def build_emulator(
    model: str,
    out: str | Path,
    *,
    adapter_blocks: int = 2,
    keep_middle: int | None = None,
    keep_ratio: float | None = None,
    distill: DistillSettings | None = None,
    cache_dir: str | None = None,
) -> EmulatorInfo:
    """Write the emulator of backbone ``model`` to folder ``out`` and return its info.

    ``keep_middle`` (a count) or ``keep_ratio`` (of the middle; default 0.5, the paper's
    "keep every other block") sets how many middle blocks survive the uniform drop.
    """
    if keep_middle is not None and keep_ratio is not None:
        raise ConfigError("--keep-middle", "give --keep-middle or --keep-ratio, not both")
    path = resolve_model_path(model, cache_dir)
    student = _load_full(path)
    _, blocks = block_list(student)
    num_layers = len(blocks)
    check_adapter_blocks(num_layers, adapter_blocks)
    if keep_middle is None:
        keep_middle = keep_for_ratio(num_layers, adapter_blocks, keep_ratio or 0.5)
    layout = OffsiteLayout.uniform(num_layers, adapter_blocks, keep_middle)
    digest = backbone_sha256(path)
    tokenizer = load_tokenizer(path)

    drop_blocks(student, layout)
    distillation = None
    if distill is not None and distill.steps > 0:
        teacher = _load_full(path)  # a second, intact copy: the true middle
        distillation = distill_emulator(teacher, student, layout, tokenizer, distill)
        del teacher

    out = Path(out).expanduser()
    info = EmulatorInfo(
        out.resolve(), layout, student.config.model_type, model, digest, distillation
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        with _quiet_transformers():
            student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the emulator from other users
        (tmp / EMULATOR_FILE).write_text(json.dumps(info.to_json(), indent=2) + "\n")
        if out.exists():
            if not (out / EMULATOR_FILE).is_file() and any(out.iterdir()):
                raise ConfigError("--out", f"{out} exists and is not an emulator folder")
            shutil.rmtree(out)
        tmp.rename(out)  # a half-written emulator is never found under its name
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return info


# ---- distillation ------------------------------------------------------------------------
@contextlib.contextmanager
def _captured_output(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """The hidden states ``module`` (a block) returns while the block is entered."""
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def public_texts(source: str, max_examples: int | None = None) -> list[str]:
    """Plain texts of a dataset (built-in name or local file) for distillation."""
    from fedpeft.data import ClassificationData, load_dataset

    data = load_dataset(source, max_examples=max_examples)
    if isinstance(data, ClassificationData):
        return list(data.texts)
    return [p + r for p, r in zip(data.prompts, data.responses, strict=True)]


def middle_output_blocks(
    teacher: Any, student: Any, layout: OffsiteLayout
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The last true middle block (teacher) and the last kept middle block (student)."""
    _, t_blocks = block_list(teacher)
    _, s_blocks = block_list(student)
    last_middle = layout.num_layers - layout.adapter_blocks - 1
    return t_blocks[last_middle], s_blocks[layout.adapter_blocks + len(layout.kept_middle) - 1]


def hidden_state_loss(
    teacher: Any,
    student: Any,
    layout: OffsiteLayout,
    batch: dict[str, torch.Tensor],
    lm_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalised MSE between the emulator's and the true middle's output hidden states.

    ``sum((h_student - h_teacher)^2) / sum(h_teacher^2)`` over real (unpadded) tokens: the
    squared error relative to the teacher's mean square, so it reads the same at every
    layer and scale. Both models see the same input to the middle (the adapter's first
    blocks are identical and frozen here). With ``lm_weight > 0`` and a causal LM, also
    the student's next-token loss (the paper's task loss during distillation).
    """
    t_block, s_block = middle_output_blocks(teacher, student, layout)
    # no KV cache: a student reduced in memory keeps its blocks' original layer indices
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "use_cache": False,
    }
    with torch.no_grad(), _captured_output(t_block) as t_out:
        teacher.base_model(**inputs)  # the body only: no LM head is needed for the target
    lm_loss = None
    with _captured_output(s_block) as s_out:
        if lm_weight > 0 and hasattr(student, "lm_head"):
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            lm_loss = student(**inputs, labels=labels).loss
        else:
            student.base_model(**inputs)
    target, got = t_out[-1].float(), s_out[-1].float()
    mask = batch["attention_mask"].unsqueeze(-1).to(target.dtype)
    nmse = (((got - target) ** 2) * mask).sum() / ((target**2) * mask).sum().clamp_min(1e-12)
    return nmse, lm_loss


def distill_emulator(
    teacher: Any,
    student: Any,
    layout: OffsiteLayout,
    tokenizer: Any,
    settings: DistillSettings,
    texts: list[str] | None = None,
) -> dict[str, Any]:
    """Train the emulator's kept middle blocks to reproduce the true middle (in place).

    Only the kept middle blocks learn; embeddings and adapter blocks stay as the
    backbone has them. Returns what was done, with the normalised hidden-state MSE on a
    held-out batch of the public text before and after.
    """
    start = time.perf_counter()
    texts = texts if texts is not None else public_texts(settings.data)
    held_out, train_texts = texts[: settings.batch_size], texts[settings.batch_size :]
    if not train_texts:
        raise ConfigError("--distill-data", f"{settings.data}: too few texts to distil on")
    _, s_blocks = block_list(student)
    middle = list(range(layout.adapter_blocks, layout.adapter_blocks + len(layout.kept_middle)))
    student.requires_grad_(False)
    params: list[torch.nn.Parameter] = []
    for position in middle:
        block = s_blocks[position]
        block.requires_grad_(True)
        params.extend(block.parameters())
    teacher.eval()
    optimizer = torch.optim.AdamW(params, lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    lm_weight = settings.lm_weight if hasattr(student, "lm_head") else 0.0

    def tokens(chunk: list[str]) -> dict[str, torch.Tensor]:
        enc = tokenizer(
            chunk,
            truncation=True,
            max_length=settings.max_length,
            padding=True,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def held_out_nmse() -> float:
        student.eval()
        with torch.no_grad():
            value, _ = hidden_state_loss(teacher, student, layout, tokens(held_out))
        return float(value)

    before = held_out_nmse()
    student.train()
    for _step in range(settings.steps):
        pick = torch.randint(len(train_texts), (settings.batch_size,), generator=generator)
        batch = tokens([train_texts[int(i)] for i in pick])
        nmse, lm_loss = hidden_state_loss(teacher, student, layout, batch, lm_weight)
        loss = nmse if lm_loss is None else nmse + lm_weight * lm_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    after = held_out_nmse()
    student.requires_grad_(False)
    return {
        "steps": settings.steps,
        "data": settings.data,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "max_length": settings.max_length,
        "lm_weight": lm_weight,
        "nmse_before": before,
        "nmse_after": after,
        "seconds": time.perf_counter() - start,
    }


# ---- a job's emulator and plug-in models ------------------------------------------------
def job_emulator(cfg: JobConfig) -> EmulatorInfo:
    """The emulator the job names in ``adapter.emulator``, read and checked."""
    if not cfg.adapter.emulator:
        raise ConfigError(
            "adapter.emulator",
            "an Offsite-Tuning job needs an emulator folder: build one with `fedpeft offsite "
            "build-emulator --model NAME --out DIR` and pass --emulator DIR",
        )
    return read_emulator(cfg.adapter.emulator, "adapter.emulator")


def _adapted(
    cfg: JobConfig,
    path: str,
    layout: OffsiteLayout,
    task: Task,
    label_names: list[str] | None,
    prepare: Callable[[Any], Any],
) -> AdaptedModel:
    from fedpeft.training.setup import AdaptedModel, resolve_device

    tokenizer = load_tokenizer(path)
    torch.manual_seed(cfg.train.seed)  # a fresh classification head and LoRA A: seeded
    base = prepare(load_backbone(path, task, label_names=label_names))
    model = apply_offsite_adapter(base, layout, cfg.adapter.train, cfg.lora, task)
    model.to(resolve_device(cfg.model.device))
    model.eval()
    return AdaptedModel(model, tokenizer, task, path, label_names)


def build_emulator_model(cfg: JobConfig, task: Task, label_names: list[str] | None) -> AdaptedModel:
    """What a client holds: the emulator with the job's adapter (full-model names)."""
    info = job_emulator(cfg)
    return _adapted(
        cfg,
        str(info.folder),
        info.layout,
        task,
        label_names,
        lambda base: reindex_blocks(base, info.layout),
    )


def build_plugin_model(cfg: JobConfig, task: Task, label_names: list[str] | None) -> AdaptedModel:
    """What the model owner evaluates and exports: the adapter in the full backbone.

    The backbone must be the one the emulator was built from (same weight files)."""
    info = job_emulator(cfg)
    path = resolve_model_path(cfg.model.name, cfg.model.cache_dir)
    check_backbone(info, path, "adapter.emulator")

    def check_blocks(base: Any) -> Any:
        _, blocks = block_list(base)
        if len(blocks) != info.layout.num_layers:
            raise ConfigError(
                "adapter.emulator",
                f"backbone has {len(blocks)} blocks, the emulator's layout "
                f"{info.layout.num_layers}",
            )
        return base

    return _adapted(cfg, path, info.layout, task, label_names, check_blocks)


def emulator_weight_bytes(folder: str | Path) -> int:
    """Bytes of an emulator's weight files (what a client downloads besides the tokenizer)."""
    return sum(f.stat().st_size for f in _weight_files(Path(folder)))


def replace_train_mode(cfg: JobConfig, mode: str) -> JobConfig:
    """``cfg`` with ``adapter.train = mode`` (benchmarks compare both)."""
    return dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, train=mode))
