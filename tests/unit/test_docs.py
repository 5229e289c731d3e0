"""The docs say what the result files say: docs/benchmarks.md is generated and current,
the README's and docs' figures are read from bench/results, links resolve."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def _report() -> Any:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_report"] = module
    spec.loader.exec_module(module)
    return module


report = _report()


def result(name: str) -> dict[str, Any]:
    return dict(json.loads((RESULTS / name).read_text()))


def test_benchmarks_page_is_current() -> None:
    page = DOCS / "benchmarks.md"
    assert page.read_text() == report.generate(RESULTS), (
        "docs/benchmarks.md is stale: run `python bench/report.py`"
    )
    assert report.main(["--check"]) == 0


def test_readme_performance_table_is_the_real_job_bench() -> None:
    """README's Flower comparison is generated from realjob_vs_flower.json."""
    text = README.read_text()
    assert report.REALJOB_MARK[0] in text and report.REALJOB_MARK[1] in text
    assert report.readme_text(report.load_results(RESULTS), text) == text, (
        "README's performance table is stale: run `python bench/report.py`"
    )


def test_generator_handles_files_it_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "secagg_round.json").write_text(
        json.dumps(
            {
                "benchmark": "secagg_round",
                "load_avg_start": [1.5, 1.0, 0.5],
                "clients": 20,
                "seconds_per_round": 3.25,
                "runs": [{"dropout": 0.1, "seconds": 2.5, "nested": {"x": 1}}],
                "by_mode": {"dense": {"bits": 24}, "compeft": {"bits": 16}},
            }
        )
    )
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "plain_list.json").write_text("[1, 2, 3]")
    text = report.generate(tmp_path)
    assert "## secagg_round.json" in text and "| seconds_per_round | 3.25 |" in text
    assert "load_avg_start `1.5, 1, 0.5`" in text  # the conditions it recorded
    assert "| 0.1 | 2.5 |" in text and "| compeft | 16 |" in text
    assert "not valid JSON" in text and "## plain_list.json" in text
    stale = tmp_path / "page.md"
    stale.write_text("old\n")
    assert report.main(["--check", "--results", str(tmp_path), "--output", str(stale)]) == 1


def test_paired_check_counts_a_collapsed_dense_run_as_a_mismatch() -> None:
    runs = {
        "dense[s=2]": {
            "kind": "federated",
            "overrides": {"s": 2},
            "rounds": 10,
            "final_eval_accuracy": 0.646,
            "bytes_up": 4360,
        },
        "compeft-0.1-ef[s=2,codec.scale=norm]": {
            "kind": "federated",
            "overrides": {"s": 2, "codec.scale": "norm"},
            "rounds": 10,
            "final_eval_accuracy": 0.790,
            "bytes_up": 100,
        },
    }
    (pair,) = report.codec_pairs({"f.json": {"runs": runs}})
    assert pair["gap_points"] == pytest.approx(-14.4)
    assert pair["within_1_point"] is False
    assert pair["bytes_up_ratio"] == pytest.approx(43.6)


def test_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README has {len(lines)} lines (at most 150)"
    assert lines[2:6] == [
        "```bash",
        "make run    # set up .venv (pinned CPU deps, offline models and data) and run the "
        "default federated job",
        "make test   # set up .venv the same way and run the test suite (what CI runs)",
        "```",
    ]


def test_make_run_is_the_benchmarked_default_job_and_readme_quotes_it() -> None:
    """`make run` runs SIMULATE_DEFAULTS; default_job.json holds a run of exactly those
    settings, and the README's figures are that run's and its centralized twin's."""
    from fedpeft.cli.simulate import SIMULATE_DEFAULTS

    current = {k: v for k, v in SIMULATE_DEFAULTS.items() if k != "output"}
    runs = result("default_job.json")["runs"]
    matching = [
        r for r in runs.values() if r["kind"] == "federated" and r.get("settings") == current
    ]
    assert matching, f"no run in default_job.json has the settings {current}"
    fed = matching[-1]
    central = next(r for r in runs.values() if r["kind"] == "centralized")
    assert central["matched_federated_examples"] == fed["examples_seen"]
    block = README.read_text().split("<!-- default-job -->")[1].split("<!-- /default-job -->")[0]
    block = " ".join(block.split())
    assert f"**{fed['final_eval_accuracy']:.3f}**" in block
    assert f"{fed['wall_seconds']:.0f} s" in block
    assert f"load average {fed['load_avg_start'][0]:.1f}" in block
    examples = central["matched_federated_examples"]
    assert f"{examples:,} examples reaches {central['final_eval_accuracy']:.3f}" in block


def _pairs() -> dict[str, dict[str, Any]]:
    files = {p.name: result(p.name) for p in sorted(RESULTS.glob("fed_accuracy*.json"))}
    return {p["compeft_run"] + "@" + p["file"]: p for p in report.codec_pairs(files)}


def _ccvr_mb() -> float:
    runs = result("fed_accuracy_calibrated.json")["runs"]
    cal = next(r["calibration"] for r in runs.values() if "calibration" in r)
    return float(cal["calibration_bytes_up"]) / cal["calibration_clients"] / 1e6


def _cohort_mean(fragment: str) -> float:
    seeds = result("fed_accuracy_cohort.json")["goals_over_seeds"]
    (group,) = [v for k, v in seeds.items() if fragment in k]
    return 100 * float(group["mean_gap"])


NORM = (
    "compeft-0.1-ef[lora.modules_to_save=['classifier', 'pooler'],train.schedule=constant,"
    "train.lr=0.004,codec.dense_below=1000,codec.feedback_decay=0.25,codec.scale=norm]"
    "@fed_accuracy_server.json"
)
FEDLC_3_PER_ROUND = (
    "train.lr=0.002,federation.clients_per_round=3,federation.rounds=67,"
    "federation.logit_adjustment=1.0]"
)


def _norm_accuracies() -> str:
    pair = _pairs()[NORM]
    return f"{pair['compeft_accuracy']:.4f} vs {pair['dense_accuracy']:.4f}"


def _flower_ratio() -> str:
    return f"**{result('fed_vs_flower.json')['ratios_fedpeft_over_flower']['wall_median']:.3f}x**"


def _ray_memory() -> str:
    return f"| {result('fed_scale.json')['headline'][0]['peak_rss_tree_gb']:.3f} GB"


PREFIX_SETTINGS = {
    "all6": "LoRA in all 6 blocks",
    "top2_nocache": "top 2 blocks, no cache",
    "top2_cache": "top 2 blocks, cache",
    "top3_cache": "top 3 blocks, cache",
    "top2_cache_fp16": "top 2 blocks, cache in fp16",
}


def _prefix_table() -> str:
    runs = result("prefix_cache.json")["runs"]
    rows = []
    for name, label in PREFIX_SETTINGS.items():
        r = runs[name]
        first, second = r["epoch_cpu_seconds"]
        speedup = r["speedup_vs_all6"]["epoch2"]
        rows.append(
            f"| {label} | {first:.1f} s | {second:.1f} s | {speedup:.2f}x | "
            f"{r['dev_accuracy']:.3f} |"
        )
    return " ".join(rows)


def _prefix_seeds() -> str:
    extra = result("prefix_cache.json")["more_seeds"]
    mean, by_seed = extra["dev_accuracy_mean"], extra["dev_accuracy_by_seed"]
    assert sorted(by_seed["top2_cache"]) == sorted(by_seed["top2_nocache"]) == ["0", "1", "2"]

    def each(name: str) -> str:
        return " / ".join(f"{by_seed[name][s]:.3f}" for s in ("0", "1", "2"))

    return (
        f"**{mean['top2_nocache']:.3f} without the cache and {mean['top2_cache']:.3f} with it** "
        f"(per seed: {each('top2_nocache')} against {each('top2_cache')})"
    )


#: (page, text the page must contain, computed from the result files)
CLAIMS: list[tuple[str, Callable[[], str]]] = [
    ("docs/simulation.md", _prefix_table),
    ("docs/simulation.md", _prefix_seeds),
    ("docs/accuracy.md", lambda: f"**{_ccvr_mb():.2f} MB per client**"),
    ("docs/accuracy.md", lambda: f"| {_cohort_mean(FEDLC_3_PER_ROUND):.2f} |"),
    ("docs/compression.md", lambda: f"**{_pairs()[NORM]['bytes_up_ratio']:.1f}x (seed 0)"),
    ("docs/compression.md", _norm_accuracies),
    ("docs/simulation.md", _flower_ratio),
    ("docs/simulation.md", _ray_memory),
]


def test_default_job_table_is_the_bench() -> None:
    text = (DOCS / "accuracy.md").read_text()
    for name, run in result("default_job.json")["runs"].items():
        assert f"| {run['final_eval_accuracy']:.3f} |" in text, name


@pytest.mark.parametrize(("page", "expected"), CLAIMS)
def test_doc_figures_are_read_from_result_files(page: str, expected: Callable[[], str]) -> None:
    text = " ".join((ROOT / page).read_text().split())
    assert expected() in text, f"{page} does not say {expected()!r}"


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_local_links_resolve(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
