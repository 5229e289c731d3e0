"""Model registry, architecture table and resolution errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedpeft.errors import ModelError
from fedpeft.models import ARCHITECTURES, MODEL_REGISTRY, Task, arch_spec, resolve_model_path


def test_registry_names() -> None:
    assert {"minilm", "smollm2-135m"} <= set(MODEL_REGISTRY)
    assert Task.CLASSIFICATION in MODEL_REGISTRY["minilm"].tasks


def test_minilm_resolves_to_packaged_folder() -> None:
    path = Path(resolve_model_path("minilm"))
    assert (path / "config.json").is_file()
    assert (path / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["nope", "not-a-model", "./missing/folder"])
def test_unknown_model_names_the_model(name: str) -> None:
    with pytest.raises(ModelError, match=r"nope|not-a-model|missing"):
        resolve_model_path(name)


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"config\.json"):
        resolve_model_path(str(tmp_path))


def test_hub_ids_pass_through() -> None:
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"


def test_architecture_table() -> None:
    assert arch_spec("bert").lora_targets == ("query", "key", "value")
    assert arch_spec("llama").blocks_path == "model.layers"
    assert all(spec.lora_targets for spec in ARCHITECTURES.values())
    with pytest.raises(ModelError, match="target_modules"):
        arch_spec("mamba")


def test_lora_head_and_targets_follow_the_settings() -> None:
    from fedpeft.adapters.lora import build_lora_model, trainable_shapes
    from fedpeft.config import LoraSettings
    from fedpeft.models.registry import load_backbone

    path = str(resolve_model_path("minilm"))

    def trainable(settings: LoraSettings) -> set[str]:
        base = load_backbone(path, Task.CLASSIFICATION, label_names=["neg", "pos"])
        return set(trainable_shapes(build_lora_model(base, settings, Task.CLASSIFICATION)))

    default = trainable(LoraSettings())  # the architecture table: classifier + pooler in full
    assert any("classifier.modules_to_save" in n for n in default)
    assert any("pooler.modules_to_save" in n for n in default)
    slim = trainable(
        LoraSettings(
            modules_to_save=["classifier"],  # PEFT's SEQ_CLS default: the pooler stays frozen
            target_modules=["query", "key", "value", "pooler.dense"],
        )
    )
    assert not any("pooler.modules_to_save" in n for n in slim)
    assert any("pooler.dense.lora_A" in n for n in slim)
    assert any("query.lora_A" in n for n in slim)
    assert not any("attention.output.dense.lora" in n for n in slim)  # suffix match only
