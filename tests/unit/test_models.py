"""Model registry, architecture table and resolution errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedpeft.errors import ConfigError, ModelError
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
    # FFA-LoRA: lora_A frozen at its seeded initialisation, only B (and the head) travel
    ffa = trainable(LoraSettings(freeze_a=True))
    assert not any(".lora_A." in n for n in ffa)
    assert ffa == {n for n in default if ".lora_A." not in n}


def test_freeze_a_keeps_a_identical_across_parties_and_in_the_export(tmp_path: Path) -> None:
    """Clients and coordinator never exchange A under freeze_a: each party's seeded build
    must give the same A, and the exported PEFT folder must hold it."""
    import torch
    from safetensors.torch import load_file

    from fedpeft.config import JobConfig
    from fedpeft.training.setup import build_adapted_model

    cfg = JobConfig().replace({"model.name": "minilm", "lora.freeze_a": True})

    def a_weights() -> dict[str, torch.Tensor]:
        model = build_adapted_model(cfg, Task.CLASSIFICATION, ["neg", "pos"]).model
        return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_A." in n}

    first, second = a_weights(), a_weights()
    assert first and first.keys() == second.keys()
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert all(float(first[n].abs().sum()) > 0 for n in first)  # initialised, not zeros
    model = build_adapted_model(cfg, Task.CLASSIFICATION, ["neg", "pos"]).model
    model.save_pretrained(str(tmp_path / "adapter"))
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert sum(".lora_A." in k for k in saved) == len(first)


def test_freeze_a_must_be_a_bool() -> None:
    from fedpeft.config import LoraSettings

    with pytest.raises(ConfigError, match=r"lora\.freeze_a"):
        LoraSettings(freeze_a="yes")  # type: ignore[arg-type]
