"""The label-free ``cluster`` partition and the seeded held-out split of instruction data.

k-means runs on arrays here (fast); the MiniLM embedding of real instructions is covered
once, on a few texts, and by the SmolLM2 job (tests/integration/test_smollm.py, slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedpeft.config import JobConfig
from fedpeft.data import (
    PARTITION_GROUPS,
    PARTITIONERS,
    InstructionData,
    example_texts,
    format_alpaca_prompt,
    kmeans_groups,
    partition,
)
from fedpeft.errors import ConfigError, DataError
from fedpeft.training.setup import (
    HOLDOUT_MAX,
    holdout_split,
    load_job_data,
    partition_groups,
    with_task_defaults,
)


def blobs(per: int = 30, centers: int = 4, dim: int = 16, seed: int = 0) -> np.ndarray:
    """``centers`` well-separated Gaussian blobs of ``per`` points each, in blob order."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, dim)) * 10
    return np.concatenate([m + rng.normal(size=(per, dim)) * 0.1 for m in means])


def alpaca_file(path: Path, n: int = 40) -> Path:
    topics = ["cooking", "physics", "poetry", "finance"]
    records = [
        {
            "instruction": f"Say something about {topics[i % 4]} number {i}.",
            "input": "" if i % 3 else f"context {i}",
            "output": f"Here is a fact about {topics[i % 4]}: {i}.",
        }
        for i in range(n)
    ]
    path.write_text(json.dumps(records))
    return path


def test_every_scheme_declares_what_it_groups_by() -> None:
    assert set(PARTITION_GROUPS) == set(PARTITIONERS)
    assert PARTITION_GROUPS["cluster"] == "clusters"
    assert PARTITION_GROUPS["iid"] is None


def test_kmeans_recovers_separated_blobs_and_numbers_them_canonically() -> None:
    x = blobs()
    ids = kmeans_groups(x, 4, seed=3)
    # each blob is one cluster, numbered in order of first appearance
    assert ids.tolist() == np.repeat(np.arange(4), 30).tolist()


def test_kmeans_is_deterministic_and_seed_independent_in_numbering() -> None:
    x = np.random.default_rng(1).normal(size=(120, 8))
    a = kmeans_groups(x, 5, seed=7)
    assert np.array_equal(a, kmeans_groups(x, 5, seed=7))
    assert a[0] == 0 and set(a.tolist()) == set(range(5))


def test_kmeans_caps_clusters_at_examples_and_refuses_bad_input() -> None:
    assert kmeans_groups(np.eye(3), 8, seed=0).tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match="embeddings"):
        kmeans_groups(np.zeros(5), 2)
    with pytest.raises(DataError, match="NaN"):
        kmeans_groups(np.array([[0.0, np.nan], [1.0, 1.0]]), 2)
    with pytest.raises(ConfigError, match="clusters"):
        kmeans_groups(np.eye(3), 0)


def test_cluster_partition_skews_clusters_across_clients() -> None:
    """Dirichlet(0.1) over 4 clusters: most clients hold mostly one cluster (iid would not)."""
    ids = kmeans_groups(blobs(per=50), 4, seed=0)
    parts = partition(ids, 8, "cluster", alpha=0.1, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))
    top_share = [np.bincount(ids[p], minlength=4).max() / len(p) for p in parts if len(p)]
    iid_share = [
        np.bincount(ids[p], minlength=4).max() / len(p) for p in partition(ids, 8, "iid", seed=0)
    ]
    assert np.mean(top_share) > 0.6 > 0.45 > np.mean(iid_share)


def test_example_texts_strip_the_alpaca_template() -> None:
    data = InstructionData(
        [format_alpaca_prompt("Name a fruit."), format_alpaca_prompt("Sum these.", "1 2")],
        ["apple", "3"],
    )
    assert example_texts(data) == ["Name a fruit.", "Sum these.\n1 2"]


def test_holdout_split_rule() -> None:
    train, held = holdout_split(5000, 0.1, 0)
    assert len(held) == 500 and len(train) == 4500
    assert sorted(train + held) == list(range(5000))
    assert holdout_split(5000, 0.1, 0) == (train, held)  # seeded
    assert holdout_split(5000, 0.1, 1)[1] != held
    assert len(holdout_split(100_000, 0.1, 0)[1]) == HOLDOUT_MAX
    assert holdout_split(3, 0.1, 0)[1] != []  # at least one when asked
    assert holdout_split(10, 0.0, 0) == (list(range(10)), [])


def test_instruction_job_without_eval_data_holds_out_examples_it_never_trains_on(
    tmp_path: Path,
) -> None:
    """The adversary: a held-out example that is also trained on makes perplexity lie."""
    data = alpaca_file(tmp_path / "a.json")
    cfg = JobConfig().replace({"data.train": str(data), "output": str(tmp_path / "r")})
    job = load_job_data(cfg)
    assert job.eval is not None and len(job.eval) == 4 and len(job.train) == 36
    assert not set(job.eval.prompts) & set(job.train.prompts)
    capped = load_job_data(cfg.replace({"data.max_train_examples": 10}))
    assert capped.eval == job.eval  # the cap never moves held-out examples into training
    assert not set(capped.eval.prompts) & set(capped.train.prompts)
    none = load_job_data(cfg.replace({"data.holdout": 0.0}))
    assert none.eval is None and len(none.train) == 40


def test_partition_groups_refuse_labels_on_instruction_data(tmp_path: Path) -> None:
    data = alpaca_file(tmp_path / "a.json")
    cfg = JobConfig().replace({"data.train": str(data), "federation.partition": "dirichlet"})
    with pytest.raises(ConfigError, match=r"federation\.partition.*'cluster'"):
        partition_groups(cfg, load_job_data(cfg).train)


@pytest.mark.slow  # loads MiniLM: ~10 s on a quiet machine, 40 s on a busy one
def test_cluster_groups_of_instruction_data_use_minilm(tmp_path: Path) -> None:
    data = alpaca_file(tmp_path / "a.json")
    cfg = JobConfig().replace(
        {
            "data.train": str(data),
            "data.clusters": 4,
            "federation.partition": "cluster",
            "model.cache_dir": str(tmp_path / "cache"),
        }
    )
    train = load_job_data(cfg).train
    groups = partition_groups(cfg, train)
    assert groups.shape == (len(train),) and set(groups.tolist()) <= set(range(4))
    assert np.array_equal(groups, partition_groups(cfg, train))  # cached embeddings agree


def test_causal_lm_defaults_fill_only_what_the_user_left_unset(tmp_path: Path) -> None:
    data = alpaca_file(tmp_path / "a.json")
    cfg = JobConfig().replace(
        {"data.train": str(data), "train.lr": 5e-4, "model.name": "smollm2-135m"}
    )
    out, applied, task = with_task_defaults(cfg, {"data.train", "train.lr"})
    assert task.value == "causal_lm"
    assert out.train.lr == 5e-4 and "train.lr" not in applied
    assert out.federation.partition == "iid" and out.data.max_length == 256
    assert out.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    minilm = JobConfig().replace({"data.train": str(data), "model.name": "minilm"})
    assert with_task_defaults(minilm, set())[1] == {}  # MiniLM only classifies
