"""Offsite-Tuning: layer selection, emulator artifact, names, plug-in forward, IP guard,
distillation and the CLI's bad-input lines — on tiny random BERT, Llama and GPT-2
backbones (the real MiniLM runs in tests/integration/test_offsite.py)."""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedpeft.adapters import load_trainable_state, trainable_state
from fedpeft.adapters.offsite import (
    DistillSettings,
    OffsiteLayout,
    build_emulator,
    build_emulator_model,
    build_plugin_model,
    distill_emulator,
    drop_blocks,
    hidden_state_loss,
    keep_for_ratio,
    read_emulator,
    uniform_middle,
)
from fedpeft.config import JobConfig
from fedpeft.errors import ConfigError
from fedpeft.models.registry import Task, block_list, load_backbone, resolve_model_path

ARCHS = ("bert", "llama", "gpt2")
LABELS = ["neg", "pos"]
TEXTS = ["a wonderful, moving film", "a dull, boring mess that never ends", "brilliant"]


def make_tiny_backbone(folder: Path, model_type: str, *, seed: int = 0, layers: int = 6) -> Path:
    """A 6-block, 32-wide random backbone of ``model_type`` saved as an HF folder, with the
    MiniLM tokenizer (every architecture here uses its 30522-token vocabulary). Every
    parameter gets its own noise, so no two blocks share a tensor (LayerNorms included)."""
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        BertConfig,
        GPT2Config,
        LlamaConfig,
    )

    from fedpeft.models.registry import load_tokenizer

    torch.manual_seed(seed)
    vocab = 30522
    if model_type == "bert":
        config: Any = BertConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        model = AutoModel.from_config(config)
    elif model_type == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=128,
            tie_word_embeddings=True,
            pad_token_id=0,
            bos_token_id=101,
            eos_token_id=102,
        )
        model = AutoModelForCausalLM.from_config(config)
    else:
        config = GPT2Config(
            vocab_size=vocab,
            n_embd=32,
            n_layer=layers,
            n_head=2,
            n_positions=128,
            pad_token_id=0,
            bos_token_id=101,
            eos_token_id=102,
        )
        model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder)
    load_tokenizer(resolve_model_path("minilm")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-backbones")
    return {arch: make_tiny_backbone(root / arch, arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def tiny_emulators(tmp_path_factory: pytest.TempPathFactory, tiny: dict[str, Path]) -> dict:
    """a = 1, keep 2 of the 4 middle blocks: emulator blocks 0, 1, 4, 5 (2 and 3 dropped)."""
    root = tmp_path_factory.mktemp("tiny-emulators")
    return {
        arch: build_emulator(str(tiny[arch]), root / arch, adapter_blocks=1, keep_middle=2)
        for arch in ARCHS
    }


def offsite_job(backbone: Path, emulator: Path, train: str = "lora", **more: Any) -> JobConfig:
    return JobConfig().replace(
        {
            "model.name": str(backbone),
            "model.device": "cpu",
            "adapter.kind": "offsite",
            "adapter.emulator": str(emulator),
            "adapter.train": train,
            **more,
        }
    )


def batch(path: Path) -> dict[str, torch.Tensor]:
    from fedpeft.models.registry import load_tokenizer

    enc = load_tokenizer(str(path))(TEXTS, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


# ---- layer selection -----------------------------------------------------------------------
@given(
    layers=st.integers(3, 64),
    a=st.integers(1, 31),
    data=st.data(),
)
def test_uniform_middle_follows_the_rule(layers: int, a: int, data: st.DataObject) -> None:
    if 2 * a >= layers:
        with pytest.raises(ConfigError, match="--adapter-blocks"):
            uniform_middle(layers, a, 1)
        return
    middle = layers - 2 * a
    keep = data.draw(st.integers(1, middle))
    kept = uniform_middle(layers, a, keep)
    assert len(kept) == keep
    assert list(kept) == sorted(set(kept))  # distinct, increasing
    assert a <= kept[0] and kept[-1] <= layers - a - 1  # inside the middle
    if keep >= 2:  # both ends of the middle, evenly spaced (gaps differ by at most one)
        assert kept[0] == a and kept[-1] == layers - a - 1
        gaps = [y - x for x, y in itertools.pairwise(kept)]
        assert max(gaps) - min(gaps) <= 1
    layout = OffsiteLayout(layers, a, kept)
    assert sorted(layout.dropped + layout.emulator_blocks) == list(range(layers))
    assert layout.adapter_indices == (*range(a), *range(layers - a, layers))


def test_uniform_middle_examples() -> None:
    assert uniform_middle(6, 1, 2) == (1, 4)  # MiniLM, a = 1, keep 2 of blocks 1..4
    assert uniform_middle(30, 2, 9) == (2, 5, 8, 11, 15, 18, 21, 24, 27)  # SmolLM2, 12.5 -> 13
    assert uniform_middle(6, 1, 1) == (3,)  # the centre (2.5 rounds up)
    assert uniform_middle(8, 2, 4) == (2, 3, 4, 5)  # everything kept
    assert keep_for_ratio(30, 2, 0.5) == 13
    assert keep_for_ratio(6, 1, 0.01) == 1


@pytest.mark.parametrize(
    ("layers", "a", "keep", "flag"),
    [(6, 3, 1, "--adapter-blocks"), (6, 0, 1, "--adapter-blocks"), (6, 1, 5, "--keep-middle")],
)
def test_bad_layouts_name_the_flag(layers: int, a: int, keep: int, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        uniform_middle(layers, a, keep)


# ---- the artifact, names and forward passes ------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_emulator_folder_describes_itself(arch: str, tiny_emulators: dict) -> None:
    info = tiny_emulators[arch]
    again = read_emulator(info.folder)
    assert again.layout == info.layout
    assert again.layout.emulator_blocks == (0, 1, 4, 5)
    assert again.layout.dropped == (2, 3)
    meta = json.loads((info.folder / "offsite.json").read_text())
    assert meta["model_type"] == arch and len(meta["backbone_sha256"]) == 64
    # transformers loads the folder by itself: 4 blocks
    model = load_backbone(str(info.folder), Task.CLASSIFICATION, label_names=LABELS)
    assert len(block_list(model)[1]) == 4


@pytest.mark.parametrize("train", ["lora", "full"])
@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_round_trips_emulator_to_full_model(
    arch: str, train: str, tiny: dict[str, Path], tiny_emulators: dict
) -> None:
    cfg = offsite_job(tiny[arch], tiny_emulators[arch].folder, train)
    emulator = build_emulator_model(cfg, Task.CLASSIFICATION, LABELS).model
    plugin = build_plugin_model(cfg, Task.CLASSIFICATION, LABELS).model
    on_emulator = trainable_state(emulator)
    assert on_emulator.keys() == trainable_state(plugin).keys()  # identical names
    assert any(".5." in k for k in on_emulator)  # the last block keeps its full index
    assert not any(f".{i}." in k for k in on_emulator for i in (1, 2, 3, 4))
    trained = {k: torch.randn_like(v) for k, v in on_emulator.items()}
    load_trainable_state(emulator, trained)
    load_trainable_state(plugin, trainable_state(emulator))
    for name, value in trainable_state(plugin).items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0)


def _hand_assembled(backbone: Path, state: dict[str, torch.Tensor], lora_scale: float) -> Any:
    """The full backbone with the adapter written into its weights by hand: whole-block
    tensors copied by name; LoRA merged as W + scale * B @ A; peft's head copies copied."""
    model = load_backbone(str(backbone), Task.CLASSIFICATION, label_names=LABELS)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            plain = name.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
            if ".lora_A." in plain:
                module = plain.split(".lora_A.")[0]
                b = state[name.replace(".lora_A.", ".lora_B.")]
                params[f"{module}.weight"].add_(lora_scale * (b @ value))
            elif ".lora_B." not in plain:
                params[plain].copy_(value)
    return model.eval()


@pytest.mark.parametrize(("arch", "train"), [("bert", "lora"), ("bert", "full"), ("gpt2", "full")])
def test_plugin_forward_equals_hand_assembled_model(
    arch: str, train: str, tiny: dict[str, Path], tiny_emulators: dict
) -> None:
    cfg = offsite_job(tiny[arch], tiny_emulators[arch].folder, train)
    plugin = build_plugin_model(cfg, Task.CLASSIFICATION, LABELS).model
    state = {k: 0.1 * torch.randn_like(v) for k, v in trainable_state(plugin).items()}
    load_trainable_state(plugin, state)
    hand = _hand_assembled(tiny[arch], state, cfg.lora.alpha / cfg.lora.r)
    inputs = batch(tiny[arch])
    with torch.no_grad():
        torch.testing.assert_close(plugin(**inputs).logits, hand(**inputs).logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_emulator_forward_equals_full_model_without_dropped_blocks(
    arch: str, tiny: dict[str, Path], tiny_emulators: dict
) -> None:
    info = tiny_emulators[arch]
    cfg = offsite_job(tiny[arch], info.folder, "full")
    emulator = build_emulator_model(cfg, Task.CLASSIFICATION, LABELS).model
    hand = load_backbone(str(tiny[arch]), Task.CLASSIFICATION, label_names=LABELS)
    path, blocks = block_list(hand)
    parent, _, attr = path.rpartition(".")
    setattr(
        hand.get_submodule(parent), attr, torch.nn.ModuleList([blocks[i] for i in (0, 1, 4, 5)])
    )
    hand.config.num_hidden_layers = 4
    # the hand-made list keeps Llama's attention layer_idx 4 and 5: no KV cache for it
    inputs = {**batch(tiny[arch]), "use_cache": False}
    with torch.no_grad():
        got = emulator.base_model(**inputs).last_hidden_state
        want = hand.eval().base_model(**inputs).last_hidden_state
    torch.testing.assert_close(got, want)


# ---- IP guard ---------------------------------------------------------------------------
def _safetensors_payload(path: Path) -> tuple[int, int]:
    """(header bytes incl. its length prefix, tensor bytes) of a safetensors file."""
    with path.open("rb") as f:
        header = struct.unpack("<Q", f.read(8))[0]
    return 8 + header, path.stat().st_size - 8 - header


@pytest.mark.parametrize("arch", ARCHS)
def test_ip_guard_no_dropped_tensor_in_the_emulator(
    arch: str, tiny: dict[str, Path], tiny_emulators: dict
) -> None:
    from safetensors.torch import load_file

    info = tiny_emulators[arch]
    full = load_file(str(tiny[arch] / "model.safetensors"))
    emulator = load_file(str(info.folder / "model.safetensors"))
    assert_ip_guard(
        full,
        emulator,
        info.layout,
        tiny[arch] / "model.safetensors",
        info.folder / "model.safetensors",
    )


def block_of(name: str) -> int | None:
    """The block index in a checkpoint key (``encoder.layer.3.…``, ``model.layers.3.…``)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layer", "layers", "h") and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def full_name(name: str, layout: OffsiteLayout) -> str:
    """An emulator checkpoint key (contiguous blocks) as the full checkpoint's key."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layer", "layers", "h") and parts[i + 1].isdigit():
            parts[i + 1] = str(layout.emulator_blocks[int(parts[i + 1])])
            break
    return ".".join(parts)


def assert_ip_guard(
    full: dict[str, torch.Tensor],
    emulator: dict[str, torch.Tensor],
    layout: OffsiteLayout,
    full_file: Path,
    emulator_file: Path,
) -> None:
    """The IP guard: no emulator tensor equals any dropped block's tensor; every emulator
    tensor *is* (undistilled) the full checkpoint's tensor of an embedding, adapter or kept
    block; the full checkpoint's other tensors are the dropped blocks' (and saved buffers
    like ``position_ids``); the emulator file is those kept tensors' bytes plus a header."""
    dropped = {k: v for k, v in full.items() if block_of(k) in layout.dropped}
    assert dropped, "the dropped blocks must exist in the full checkpoint"
    for name, tensor in emulator.items():
        for secret_name, secret in dropped.items():
            if tensor.shape == secret.shape:
                assert not torch.equal(tensor, secret), f"{name} equals dropped {secret_name}"
    mapped = {full_name(k, layout): v for k, v in emulator.items()}
    assert not set(mapped) & set(dropped)
    for name, tensor in mapped.items():
        assert torch.equal(tensor, full[name]), f"emulator {name} is not the backbone's"
    unexplained = set(full) - set(mapped) - set(dropped)
    assert all(n.endswith("position_ids") for n in unexplained), unexplained
    header, payload = _safetensors_payload(emulator_file)
    assert payload == sum(t.numel() * t.element_size() for t in mapped.values()) and header > 8
    assert emulator_file.stat().st_size < full_file.stat().st_size


# ---- distillation --------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_distillation_lowers_the_hidden_state_mse(arch: str, tiny: dict[str, Path]) -> None:
    from fedpeft.adapters.offsite.build import load_full
    from fedpeft.models.registry import load_tokenizer

    path = str(tiny[arch])
    teacher, student = load_full(path), load_full(path)
    layout = OffsiteLayout.uniform(6, 1, 2)
    drop_blocks(student, layout)
    texts = [f"{t} number {i}" for i in range(8) for t in TEXTS]
    settings = DistillSettings(steps=8, lr=3e-3, batch_size=6, max_length=16, seed=0)
    before_params = {k: v.clone() for k, v in student.named_parameters()}
    report = distill_emulator(teacher, student, layout, load_tokenizer(path), settings, texts)
    assert report["nmse_after"] < report["nmse_before"]
    changed = {k for k, v in student.named_parameters() if not torch.equal(v, before_params[k])}
    middle_names = {n for n, _ in student.named_parameters() if ".1." in n or ".2." in n}
    assert changed and changed <= middle_names  # only the kept middle (positions 1, 2) learns
    # the loss itself: zero for the full model against itself
    with torch.no_grad():
        nmse, _ = hidden_state_loss(
            teacher, teacher, OffsiteLayout(6, 1, (1, 2, 3, 4)), batch(tiny[arch])
        )
    assert float(nmse) == pytest.approx(0.0, abs=1e-10)


# ---- command line ------------------------------------------------------------------------
def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from fedpeft.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return int(exit_info.value.code or 0), out.out + out.err


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--adapter-blocks", "3"], "--adapter-blocks"),
        (["--adapter-blocks", "1", "--keep-middle", "5"], "--keep-middle"),
        (["--keep-ratio", "1.5"], "--keep-ratio"),
        (["--keep-middle", "1", "--keep-ratio", "0.5"], "--keep-middle"),
    ],
)
def test_build_emulator_bad_input_is_one_line_exit_2(
    extra: list[str], flag: str, tiny: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    argv = ["offsite", "build-emulator", "--model", str(tiny["bert"]), "--out", str(tmp_path / "e")]
    code, text = run_cli([*argv, *extra], capsys)
    assert code == 2
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and flag in lines[0]
    assert not (tmp_path / "e").exists()


def test_build_emulator_unknown_architecture(tmp_path: Path, capsys: Any) -> None:
    from transformers import MambaConfig

    MambaConfig(hidden_size=16, num_hidden_layers=4, vocab_size=100).save_pretrained(tmp_path)
    code, text = run_cli(
        ["offsite", "build-emulator", "--model", str(tmp_path), "--out", str(tmp_path / "e")],
        capsys,
    )
    assert code == 2 and "--model" in text and "mamba" in text


def test_emulator_for_another_backbone_is_refused(
    tiny: dict[str, Path], tiny_emulators: dict, tmp_path: Path, capsys: Any
) -> None:
    other = make_tiny_backbone(tmp_path / "other", "bert", seed=1)
    code, text = run_cli(
        [
            "simulate",
            "--adapter",
            "offsite",
            "--emulator",
            str(tiny_emulators["bert"].folder),
            "--model",
            str(other),
            "--rounds",
            "1",
            "--output",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 2
    assert "adapter.emulator" in text and "sha256" in text and "--model" in text


def test_offsite_without_emulator_is_refused(tmp_path: Path, capsys: Any) -> None:
    code, text = run_cli(
        ["simulate", "--adapter", "offsite", "--output", str(tmp_path / "run")], capsys
    )
    assert code == 2 and "adapter.emulator" in text and "build-emulator" in text


def test_not_an_emulator_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--emulator"):
        read_emulator(tmp_path)
    (tmp_path / "offsite.json").write_text('{"format": "something-else"}')
    with pytest.raises(ConfigError, match="malformed"):
        read_emulator(tmp_path)
