"""Frozen-prefix caching (lora.layers > 0): the cached path computes what the model
computes, trains as the model trains, reuses its states and keeps to its memory cap."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from fedpeft.adapters import load_trainable_state, trainable_state
from fedpeft.adapters.lora import build_lora_model
from fedpeft.config import JobConfig, LoraSettings, TrainConfig
from fedpeft.data import ClassificationData
from fedpeft.errors import ConfigError
from fedpeft.models.registry import Task, load_backbone, resolve_model_path
from fedpeft.training.encode import EncodedData, encode
from fedpeft.training.loop import train_local
from fedpeft.training.prefix import PrefixCache, frozen_blocks, prefix_cache_for

TEXTS = [
    "a wonderful, moving film",
    "bad",
    "i hated every minute of this long, tedious and clumsy thing",
    "great acting and a lovely story",
    "a waste of time",
    "superb direction, warm heart",
    "awful and tedious",
    "i loved it",
    "the plot was thin but the actors saved it more often than not",
    "dull",
    "brilliant and funny",
    "terrible acting and a bad plot",
]
LABELS = [1, 0, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0]


@pytest.fixture(scope="module")
def minilm() -> tuple[Any, Any]:
    """MiniLM (6 blocks) with LoRA in the top 2, and its tokenizer."""
    from fedpeft.training.setup import build_adapted_model

    cfg = JobConfig().replace({"lora.layers": 2, "model.device": "cpu"})
    adapted = build_adapted_model(cfg, Task.CLASSIFICATION, ["neg", "pos"])
    with torch.no_grad():  # B = 0 at initialisation: make the adapter count
        for name, param in adapted.model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
    return adapted.model, adapted.tokenizer


@pytest.fixture(scope="module")
def data(minilm: tuple[Any, Any]) -> EncodedData:
    return encode(minilm[1], ClassificationData(TEXTS, LABELS, ["neg", "pos"]), 64)


def cache_of(model: Any, data: EncodedData, max_bytes: int = 2**30) -> PrefixCache:
    return PrefixCache(model, data, frozen_blocks(model), max_bytes=max_bytes)


def no_dropout(model: torch.nn.Module) -> None:
    """Every dropout off, so a model in training mode is deterministic."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def test_lora_layers_adapts_the_top_blocks_only(minilm: tuple[Any, Any]) -> None:
    model, _ = minilm
    adapted = {n.split(".layer.")[1].split(".")[0] for n in trainable_state(model) if ".lora_" in n}
    assert adapted == {"4", "5"}
    assert frozen_blocks(model) == 4


def test_lora_layers_beyond_the_blocks_is_refused() -> None:
    base = load_backbone(resolve_model_path("minilm"), Task.CLASSIFICATION, label_names=["a", "b"])
    with pytest.raises(ConfigError, match="6 transformer blocks") as err:
        build_lora_model(base, LoraSettings(layers=7), Task.CLASSIFICATION)
    assert err.value.field == "lora.layers"


def test_cached_logits_are_the_model_logits(minilm: tuple[Any, Any], data: EncodedData) -> None:
    model, _ = minilm
    model.eval()
    rows = list(range(len(data)))  # lengths 3 to 16 tokens: padding inside the batch
    batch = data.batch(rows)
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    cache = cache_of(model, data)
    first = cache.logits(rows, data.input_ids)
    again = cache.logits(rows[::-1], data.input_ids[::-1])  # from the cache, other padding
    torch.testing.assert_close(first, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, full.flip(0), atol=1e-5, rtol=0)
    assert cache.computed == len(data) and cache.hits == len(data)


def test_cached_evaluation_is_the_model_evaluation(
    minilm: tuple[Any, Any], data: EncodedData
) -> None:
    """Evaluation with a cache over the evaluation set (what LoraClientApp keeps for the
    whole run) gives the plain evaluation's metrics, split into slices or not."""
    from fedpeft.training.loop import evaluate_sums, finish_eval

    model, _ = minilm
    plain = finish_eval([evaluate_sums(model, data, 5)])
    cache = cache_of(model, data)
    for parts in (1, 3):
        cached = finish_eval(
            [evaluate_sums(model, data, 5, part=p, parts=parts, prefix=cache) for p in range(parts)]
        )
        assert cached["eval_accuracy"] == plain["eval_accuracy"]
        assert cached["eval_loss"] == pytest.approx(plain["eval_loss"], abs=1e-5)
    assert cache.computed == len(data) and cache.hits == len(data)  # the second pass hit


def test_half_precision_cache_stays_close(minilm: tuple[Any, Any], data: EncodedData) -> None:
    model, _ = minilm
    model.eval()
    rows = list(range(len(data)))
    exact = cache_of(model, data)
    half = PrefixCache(model, data, 4, max_bytes=2**30, dtype=torch.float16)
    torch.testing.assert_close(
        half.logits(rows, data.input_ids), exact.logits(rows, data.input_ids), atol=1e-2, rtol=0
    )
    assert half.bytes * 2 == exact.bytes  # half the memory


def test_cached_gradients_are_the_model_gradients(
    minilm: tuple[Any, Any], data: EncodedData
) -> None:
    model, _ = minilm
    model.eval()  # dropout off on both paths
    rows = [0, 2, 5, 8]
    batch = data.batch(rows)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def grads(logits: torch.Tensor) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
        return {n: p.grad.clone() for n, p in params.items() if p.grad is not None}

    full = grads(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)
    cached = grads(cache_of(model, data).logits(rows, [data.input_ids[i] for i in rows]))
    model.zero_grad(set_to_none=True)
    assert full.keys() == cached.keys() and len(full) == len(params)
    for name in full:
        torch.testing.assert_close(cached[name], full[name], atol=1e-6, rtol=1e-4)


def test_training_with_the_cache_trains_as_without(
    minilm: tuple[Any, Any], data: EncodedData
) -> None:
    """Dropout off: two epochs with FedLC, FedProx and gradient accumulation land on the
    same adapter, and the second epoch computes no prefix."""
    model, _ = minilm
    start = trainable_state(model)
    cfg = TrainConfig(epochs=2.0, batch_size=4, grad_accum=2, lr=5e-3, warmup_ratio=0.0)
    kwargs: dict[str, Any] = {"seed": 3, "proximal_mu": 0.1, "logit_adjustment": 1.0}
    saved = {m: m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    try:
        no_dropout(model)
        plain = train_local(model, data, cfg, **kwargs)
        without = trainable_state(model)
        load_trainable_state(model, start)
        cache = cache_of(model, data)
        cached = train_local(model, data, cfg, prefix=cache, **kwargs)
        with_cache = trainable_state(model)
    finally:
        for module, p in saved.items():
            module.p = p
        load_trainable_state(model, start)
    assert cached.steps == plain.steps == 3 and cached.examples == 2 * len(data)
    assert cached.loss == pytest.approx(plain.loss, abs=1e-5)
    for name in without:
        torch.testing.assert_close(with_cache[name], without[name], atol=1e-5, rtol=1e-4)
    assert cache.computed == len(data)  # epoch 1 filled the cache ...
    assert cache.hits == len(data)  # ... epoch 2 only read it


def test_clients_share_the_cache_by_global_index(
    minilm: tuple[Any, Any], data: EncodedData
) -> None:
    model, _ = minilm
    start = trainable_state(model)
    cache = cache_of(model, data)
    cfg = TrainConfig(epochs=1.0, batch_size=4, warmup_ratio=0.0)
    try:
        train_local(model, data.subset([0, 1, 2, 3, 4, 5]), cfg, seed=0, prefix=cache)
        assert sorted(cache._states) == [0, 1, 2, 3, 4, 5]
        train_local(model, data.subset([4, 5, 6, 7]), cfg, seed=0, prefix=cache)
        assert cache.computed == 8 and cache.hits == 2  # 4 and 5 came from client one
        assert data.subset([4, 5, 6, 7]).subset([1, 3]).global_indices() == [5, 7]
        other = encode(minilm[1], ClassificationData(TEXTS[::-1], LABELS[::-1], ["neg", "pos"]), 64)
        with pytest.raises(ValueError, match="not example 0 of the cached dataset"):
            train_local(model, other.subset([0, 1]), cfg, seed=0, prefix=cache)
    finally:
        load_trainable_state(model, start)


def test_least_recently_used_examples_leave_beyond_the_cap(
    minilm: tuple[Any, Any], data: EncodedData
) -> None:
    model, _ = minilm
    same = encode(minilm[1], ClassificationData(["a joy to watch"] * 5, [1] * 5, ["n", "p"]), 64)
    one = cache_of(model, same).states([0], [same.input_ids[0]])[0].nbytes
    cache = cache_of(model, same, max_bytes=3 * one)  # room for three examples
    ids = same.input_ids
    cache.states([0, 1, 2], ids[:3])
    cache.states([0], ids[:1])  # 0 is now the most recently used
    cache.states([3], ids[3:4])  # evicts 1, the least recently used
    assert sorted(cache._states) == [0, 2, 3] and cache.bytes == 3 * one
    cache.states([4, 1], [ids[4], ids[1]])  # evicts 2 and 0
    assert sorted(cache._states) == [1, 3, 4] and cache.bytes <= cache.max_bytes
    assert cache.computed == 6 and cache.hits == 1
    tiny = cache_of(model, same, max_bytes=one // 2)  # smaller than one example: still right
    assert len(tiny.states([0, 1], ids[:2])) == 2 and len(tiny) == 0


def test_the_job_config_switches_it(
    minilm: tuple[Any, Any], data: EncodedData, caplog: pytest.LogCaptureFixture
) -> None:
    model, _ = minilm
    job = JobConfig().replace({"lora.layers": 2, "train.prefix_cache_mb": 1})
    cache = prefix_cache_for(model, data, job)
    assert cache is not None and cache.max_bytes == 2**20 and len(cache.upper) == 2
    assert prefix_cache_for(model, data, job.replace({"train.prefix_cache": False})) is None
    assert prefix_cache_for(model, data, job.replace({"lora.layers": 0})) is None
    half = prefix_cache_for(model, data, job.replace({"train.prefix_cache_dtype": "bf16"}))
    assert half is not None and half.dtype is torch.bfloat16
    with caplog.at_level(logging.INFO, logger="fedpeft.training.prefix"):
        causal = EncodedData(data.input_ids, None, data.input_ids, data.pad_id)
        assert prefix_cache_for(model, causal, job) is None
    assert [r.getMessage() for r in caplog.records] == [
        "prefix cache off (causal LM training): training runs the whole model"
    ]


def _tiny(arch: str) -> tuple[Any, EncodedData]:
    """A random 3-block classifier of ``arch`` with LoRA in the top block, and data."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        arch,
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        n_embd=32,
        n_layer=3,
        n_head=2,
        n_positions=40,
        pad_token_id=1,
        num_labels=3,
    )
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(config)
    model = build_lora_model(base, LoraSettings(layers=1), Task.CLASSIFICATION)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0.0, 0.05)
    lengths = [5, 9, 3, 12, 7]
    ids = [torch.randint(2, 64, (n,)) for n in lengths]
    return model, EncodedData(ids, torch.tensor([0, 1, 2, 1, 0]), None, 1)


def test_roberta_cached_logits_are_the_model_logits() -> None:
    model, data = _tiny("roberta")
    model.eval()
    rows = list(range(len(data)))
    batch = data.batch(rows)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    cached = cache_of(model, data).logits(rows, data.input_ids)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


def test_unsupported_architectures_train_the_whole_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model, data = _tiny("gpt2")
    job = JobConfig().replace({"lora.layers": 1})
    with caplog.at_level(logging.INFO, logger="fedpeft.training.prefix"):
        assert prefix_cache_for(model, data, job) is None
    assert "architecture `gpt2`" in caplog.text
    with pytest.raises(ValueError, match="architecture `gpt2`"):
        cache_of(model, data)


def test_federated_clients_reuse_the_workers_cache(tmp_path: Any, tiny_text_file: Any) -> None:
    """Two local epochs: each client's second pass reads what its first computed."""
    from fedpeft.rundir import RunDir
    from fedpeft.simulation import run_simulation

    cfg = JobConfig().replace(
        {
            "data.train": str(tiny_text_file),
            "data.eval": str(tiny_text_file),
            "output": str(tmp_path / "run"),
            "federation.clients": 4,
            "federation.clients_per_round": 2,
            "federation.rounds": 2,
            "federation.partition": "iid",
            "train.epochs": 2.0,
            "train.batch_size": 4,
            "train.threads": 1,
            "lora.layers": 2,
        }
    )
    run_simulation(cfg, export=False)
    records = RunDir(cfg.output).read_metrics()
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["prefix_hit_rate"] >= 0.5 for r in records)
