"""Generate ``docs/benchmarks.md`` from ``bench/results/*.json``: every number with its
conditions, nothing typed by hand.

Usage::

    python bench/report.py            # write docs/benchmarks.md
    python bench/report.py --stdout   # print it instead
    python bench/report.py --check    # exit 1 when docs/benchmarks.md is stale

Known result files get a section that reads them (federated accuracy runs, the default
job, codec bits); derived checks — ComPEFT against the dense run of the same settings,
CCVR's upload per client, gaps over seeds — are computed here, by this committed code.
Any other file (new benchmarks land every week) gets a generic section: its top-level
scalar fields, the conditions it recorded (machine, load average, command, threads) and
a table of each list of flat records, so the page always regenerates.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
PAGE = BENCH.parent / "docs" / "benchmarks.md"

#: Fields that say under which conditions a benchmark ran.
CONDITION_KEYS = (
    "benchmark",
    "started",
    "finished",
    "command",
    "threads",
    "threads_requested",
    "load_avg_start",
    "load_avg_end",
    "input",
    "repeats",
)
MAX_COLUMNS = 9  # generic tables: the first scalar columns only

Section = Callable[[str, dict[str, Any]], list[str]]


# ----------------------------------------------------------------------------- formatting


def fmt(value: Any) -> str:
    """A value for a Markdown cell: 4 significant digits, lists joined, pipes escaped."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def is_flat_list(value: Any) -> bool:
    """A list of scalars (load averages, per-round seconds)."""
    return isinstance(value, list) and all(is_scalar(v) for v in value)


def conditions(data: Mapping[str, Any]) -> list[str]:
    """The conditions a result file recorded: machine, load, command, threads, dates."""
    items = [(k, data[k]) for k in CONDITION_KEYS if k in data]
    machine = data.get("machine") or data.get("setup")
    if isinstance(machine, dict):
        items += [(f"machine.{k}", v) for k, v in machine.items() if is_scalar(v)]
    for key in ("cpu_count", "platform", "python"):
        if key in data and is_scalar(data[key]):
            items.append((key, data[key]))
    if not items:
        return ["Conditions: not recorded in this file.", ""]
    return ["Conditions: " + "; ".join(f"{k} `{fmt(v)}`" for k, v in items) + ".", ""]


# ----------------------------------------------------------------------------- generic


def generic_section(name: str, data: Any) -> list[str]:
    """Top-level scalars, conditions, and one table per list of flat records."""
    out = [f"## {name}", ""]
    if not isinstance(data, dict):
        return [*out, f"A JSON {type(data).__name__}; no fields to show.", ""]
    out += conditions(data)
    scalars = [
        (k, v)
        for k, v in data.items()
        if k not in CONDITION_KEYS and (is_scalar(v) or is_flat_list(v))
    ]
    if scalars:
        out += table(["field", "value"], scalars)
    for key, value in data.items():
        records = _records(value)
        if records:
            out += [f"`{key}`:", ""]
            out += records_table(records)
        elif isinstance(value, dict) and key not in ("machine", "source_before", "source_after"):
            nested = [(k, v) for k, v in value.items() if is_scalar(v) or is_flat_list(v)]
            if nested:
                out += [f"`{key}`:", ""]
                out += table(["field", "value"], nested)
    return out


def _records(value: Any) -> list[dict[str, Any]] | None:
    """A list of dicts, or a dict of dicts (name -> record), as rows; else None."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return list(value)
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return [{"name": k, **v} for k, v in value.items()]
    return None


def records_table(records: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for rec in records:
        for k, v in rec.items():
            if k not in columns and (is_scalar(v) or is_flat_list(v)):
                columns.append(k)
    columns = columns[:MAX_COLUMNS]
    if not columns:
        return [f"{len(records)} nested records (no scalar fields).", ""]
    return table(columns, ([rec.get(c) for c in columns] for rec in records))


# ----------------------------------------------------------------------------- fed_accuracy


def accuracy_section(name: str, data: dict[str, Any]) -> list[str]:
    out = [f"## {name}", ""]
    setup = data.get("setup")
    if isinstance(setup, dict):
        out += ["Setup: " + "; ".join(f"{k} `{fmt(v)}`" for k, v in setup.items()) + ".", ""]
    for note in data.get("notes", []):
        out += [f"> {fmt(note)}", ""]
    rows = []
    for run, r in data.get("runs", {}).items():
        rows.append(
            [
                f"`{run}`",
                r.get("kind"),
                r.get("rounds", r.get("matched_rounds")),
                r.get("examples_seen"),
                r.get("final_eval_accuracy"),
                None if "bytes_up" not in r else r["bytes_up"] / 1e6,
                r.get("wall_seconds"),
                r.get("finished"),
            ]
        )
    out += table(
        ["run", "kind", "rounds", "examples", "accuracy", "MB up", "wall s", "finished"], rows
    )
    seeds = data.get("goals_over_seeds") or {}
    if seeds:
        out += ["Gap to the best centralized run at the same examples, by seed:", ""]
        out += table(
            ["settings", "gap by seed (points)", "mean (points)"],
            (
                [
                    f"`{group}`",
                    ", ".join(f"{s}: {100 * g:.1f}" for s, g in v.get("gap_by_seed", {}).items()),
                    100 * v["mean_gap"],
                ]
                for group, v in seeds.items()
            ),
        )
    return out


def codec_pairs(files: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """ComPEFT runs beside the dense run with the same non-codec settings and rounds:
    accuracy of both, the gap and the ratio of bytes uploaded."""
    pairs = []
    for fname, data in files.items():
        runs = data.get("runs", {})
        if not isinstance(runs, dict):
            continue
        for cname, c in runs.items():
            if not cname.startswith("compeft") or c.get("kind") != "federated":
                continue
            same = {k: v for k, v in c.get("overrides", {}).items() if not k.startswith("codec.")}
            dense = next(
                (
                    (dname, d)
                    for dname, d in runs.items()
                    if dname.partition("[")[0] == "dense"
                    and d.get("overrides") == same
                    and d.get("rounds") == c.get("rounds")
                ),
                None,
            )
            if dense is None:
                continue
            dname, d = dense
            gap = d["final_eval_accuracy"] - c["final_eval_accuracy"]
            pairs.append(
                {
                    "file": fname,
                    "compeft_run": cname,
                    "dense_run": dname,
                    "rounds": c.get("rounds"),
                    "dense_accuracy": d["final_eval_accuracy"],
                    "compeft_accuracy": c["final_eval_accuracy"],
                    "gap_points": 100 * gap,
                    "within_1_point": abs(gap) <= 0.01,
                    "bytes_up_ratio": d["bytes_up"] / c["bytes_up"],
                }
            )
    return pairs


def codec_pairs_section(files: Mapping[str, dict[str, Any]]) -> list[str]:
    pairs = codec_pairs(files)
    if not pairs:
        return []
    out = [
        "## ComPEFT against dense, same settings (derived)",
        "",
        "Each ComPEFT run beside the dense run of the same file with the same non-codec "
        "settings and rounds. *gap* = dense − ComPEFT accuracy in points; *within 1 point* "
        "means |gap| ≤ 1 (a ComPEFT run far *above* its dense run says the dense run failed, "
        "not that they agree). *bytes ratio* = dense bytes up / ComPEFT bytes up. Read a "
        "ratio only where the accuracies match.",
        "",
    ]
    out += table(
        ["file", "ComPEFT run", "dense acc.", "ComPEFT acc.", "gap", "within 1 pt", "bytes ratio"],
        (
            [
                p["file"],
                f"`{p['compeft_run']}`",
                p["dense_accuracy"],
                p["compeft_accuracy"],
                p["gap_points"],
                p["within_1_point"],
                p["bytes_up_ratio"],
            ]
            for p in pairs
        ),
    )
    matched = [p for p in pairs if p["within_1_point"]]
    if matched:
        best = max(matched, key=lambda p: p["bytes_up_ratio"])
        out += [
            f"Largest bytes ratio among pairs within 1 point: **{best['bytes_up_ratio']:.1f}x** "
            f"(`{best['compeft_run']}` in {best['file']}: {best['compeft_accuracy']:.3f} vs "
            f"dense {best['dense_accuracy']:.3f}).",
            "",
        ]
    return out


def ccvr_cost_section(files: Mapping[str, dict[str, Any]]) -> list[str]:
    rows = []
    for fname, data in files.items():
        for run, r in (data.get("runs") or {}).items():
            cal = r.get("calibration") if isinstance(r, dict) else None
            if not isinstance(cal, dict) or not cal.get("calibration_clients"):
                continue
            n = cal["calibration_clients"]
            rows.append(
                [
                    fname,
                    f"`{run}`",
                    n,
                    cal["calibration_bytes_up"] / n / 1e6,
                    cal.get("uncalibrated_eval_accuracy"),
                    r.get("final_eval_accuracy"),
                ]
            )
    if not rows:
        return []
    return [
        "## CCVR calibration cost (derived)",
        "",
        "Upload per client = calibration_bytes_up / calibration_clients.",
        "",
        *table(
            [
                "file",
                "run",
                "clients",
                "MB up per client",
                "acc. before calibration",
                "acc. after",
            ],
            rows,
        ),
    ]


# ----------------------------------------------------------------------------- others


def default_job_section(name: str, data: dict[str, Any]) -> list[str]:
    out = [f"## {name}", ""]
    defaults = data.get("simulate_defaults", {})
    out += [
        "The job `make run` runs (`fedpeft simulate` without flags; simulate's own "
        f"defaults: {fmt(defaults)}), and candidate settings through the same code path.",
        "",
    ]
    rows = []
    for run, r in data.get("runs", {}).items():
        rows.append(
            [
                f"`{run}`",
                r.get("overrides"),
                r.get("examples_seen"),
                r.get("final_eval_accuracy"),
                r.get("wall_seconds"),
                r.get("threads"),
                r.get("load_avg_start"),
                r.get("finished"),
            ]
        )
    return out + table(
        ["run", "settings", "examples", "accuracy", "wall s", "threads", "load avg", "finished"],
        rows,
    )


def codec_bits_section(name: str, data: dict[str, Any]) -> list[str]:
    out = [f"## {name}", "", *conditions(data)]
    for w in data.get("workloads", []):
        out += [f"Workload `{w.get('name')}`: {fmt(w.get('coordinates'))} coordinates.", ""]
        out += table(
            ["codec", "density", "bits/coord", "x vs fp32", "rel. L2 error", "x floor"],
            (
                [
                    r.get("codec"),
                    r.get("density"),
                    r.get("bits_per_coord"),
                    r.get("compression_vs_fp32"),
                    r.get("relative_l2_error"),
                    r.get("ratio_to_floor"),
                ]
                for r in w.get("results", [])
            ),
        )
    return out


def section_for(name: str, data: Any) -> Section:
    if not isinstance(data, dict):
        return generic_section
    if name.startswith("fed_accuracy") and isinstance(data.get("runs"), dict):
        return accuracy_section
    if data.get("benchmark") == "default_job":
        return default_job_section
    if data.get("benchmark") == "codec_bits":
        return codec_bits_section
    return generic_section


# ----------------------------------------------------------------------------- page


def load_results(folder: Path = RESULTS) -> dict[str, Any]:
    """Every ``*.json`` under ``folder`` by file name, sorted (the page is deterministic)."""
    out: dict[str, Any] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            out[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            out[path.name] = {"unreadable": f"not valid JSON: {exc}"}
    return out


def generate(folder: Path = RESULTS) -> str:
    results = load_results(folder)
    lines = [
        "# Benchmarks",
        "",
        "<!-- generated by bench/report.py from bench/results/*.json; do not edit: run "
        "`python bench/report.py` (tests fail when this page is stale) -->",
        "",
        "Every figure below is read from a file in `bench/results/` (named in each "
        "section), with the conditions that file recorded. The machine is shared: compare "
        "wall times only inside one file.",
        "",
        "Files: " + ", ".join(f"`{n}`" for n in results) + ".",
        "",
    ]
    accuracy = {n: d for n, d in results.items() if section_for(n, d) is accuracy_section}
    lines += codec_pairs_section(accuracy)
    lines += ccvr_cost_section(accuracy)
    for name, data in results.items():
        lines += section_for(name, data)(name, data)
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- README

README = BENCH.parent / "README.md"
REALJOB = "realjob_vs_flower.json"
REALJOB_MARK = ("<!-- realjob -->", "<!-- /realjob -->")


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


TARGET_KEYS = ("time_to_target_s", "rounds_to_target", "bytes_to_target")


def realjob_summary(data: Mapping[str, Any]) -> str:
    """README's performance table: Flower against fedpeft on the real job, averaged over
    the seeds of ``realjob_vs_flower.json``, ratios against Flower from the same run."""
    runs = data["runs"]
    sides = [s for s in ("flower", "dense", "compressed") if any(r["side"] == s for r in runs)]

    def per(side: str, key: str, seeds: set[int] | None = None) -> float | None:
        return _mean(
            r.get(key) for r in runs if r["side"] == side and (seeds is None or r["seed"] in seeds)
        )

    def last5(side: str) -> float | None:
        return _mean(
            sum(r["accuracy"][-5:]) / len(r["accuracy"][-5:]) for r in runs if r["side"] == side
        )

    def cell(side: str, key: str, unit: Callable[[float], str], ratio: bool = True) -> str:
        value = last5(side) if key == "last5" else per(side, key)
        if value is None:
            return "not reached"
        text = unit(value)
        seeds = None
        if key in TARGET_KEYS:  # averaged over the seeds that got there; Flower's too
            seeds = {r["seed"] for r in runs if r["side"] == side and r.get(key) is not None}
            total = sum(r["side"] == side for r in runs)
            if len(seeds) < total:
                text += f" [{len(seeds)} of {total} seeds]"
        base = per("flower", key, seeds)
        if ratio and side != "flower" and base:
            r = value / base
            text += f" ({r:.2f}x)" if r >= 0.2 else f" (1/{1 / r:.1f})"
        return text

    secs: Callable[[float], str] = lambda v: f"{v:.1f} s"  # noqa: E731
    mb: Callable[[float], str] = lambda v: f"{v / 1e6:.1f} MB"  # noqa: E731
    acc: Callable[[float], str] = lambda v: f"{v:.3f}"  # noqa: E731
    rows = [
        ("mean round wall (train + eval)", "mean_round_seconds", secs, True),
        ("time to 0.80 dev accuracy", "time_to_target_s", secs, True),
        ("rounds to 0.80", "rounds_to_target", lambda v: f"{v:.1f}", False),
        ("bytes up + down, all rounds", "bytes_total", mb, True),
        ("bytes to 0.80", "bytes_to_target", mb, True),
        ("dev accuracy after the last round", "final_accuracy", acc, False),
        ("mean dev accuracy, last 5 rounds", "last5", acc, False),
        ("CPU busy (machine-wide)", "cpu_busy", lambda v: f"{v:.0%}", False),
    ]
    job = data["job"]
    loads = [r["load_before"][0] for r in runs if r.get("load_before")]
    names = {"flower": "Flower 1.41", "dense": "fedpeft dense", "compressed": "fedpeft fast"}
    lines = [
        f"MiniLM + LoRA on SST-2 over {job['clients']} clients (Dirichlet 0.5), "
        f"{job['clients_per_round']} per round, {job['rounds']} rounds, seeds "
        f"{', '.join(str(s) for s in job['seeds'])}; the same shards and cohorts on both "
        "sides, every round evaluated on all 872 dev sentences; "
        f"load average {min(loads):.1f}–{max(loads):.1f} before the runs "
        f"(`bench/results/{REALJOB}`; ratios against Flower in brackets):",
        "",
        "| | " + " | ".join(names[s] for s in sides) + " |",
        "| --- |" + " --- |" * len(sides),
    ]
    for label, key, unit, ratio in rows:
        lines.append(f"| {label} | " + " | ".join(cell(s, key, unit, ratio) for s in sides) + " |")
    kept = sorted({r["seed"] for r in runs if r.get("kept_from")})
    if kept:
        origin = next(r["kept_from"] for r in runs if r.get("kept_from"))
        lines += [
            "",
            f"Seed(s) {', '.join(map(str, kept))}: all sides run together in an earlier "
            f"invocation ({origin['file_started']}, commit {str(origin['git_head'])[:7]}), "
            "kept in the file by `--keep`; the other seeds ran in this one. Ratios to 0.80 "
            "compare with Flower's mean over the seeds where that side got there.",
        ]
    return "\n".join(lines) + "\n"


def readme_text(results: Mapping[str, Any], current: str) -> str:
    """README with its generated block replaced (unchanged without the result file)."""
    start, end = REALJOB_MARK
    if REALJOB not in results or start not in current:
        return current
    head, rest = current.split(start, 1)
    _old, tail = rest.split(end, 1)
    return f"{head}{start}\n{realjob_summary(results[REALJOB])}{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is stale")
    parser.add_argument("--stdout", action="store_true", help="print instead of writing")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--output", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    text = generate(args.results)
    if args.stdout:
        sys.stdout.write(text)
        return 0
    readme = README.read_text(encoding="utf-8")
    fresh_readme = readme_text(load_results(args.results), readme)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
        if current != text or readme != fresh_readme:
            print(
                "docs/benchmarks.md or README is stale: run python bench/report.py", file=sys.stderr
            )
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    if readme != fresh_readme:
        README.write_text(fresh_readme, encoding="utf-8")
    print(f"wrote {args.output} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
