"""Scale: 1000 registered virtual clients, 100 per round, real MiniLM + LoRA clients.

Usage (from the repository root)::

    .venv/bin/python bench/fed_scale.py                       # Ray (2 workers), then in-process
    .venv/bin/python bench/fed_scale.py --backends ray --rounds 2 --max-steps 1

Each backend runs in a fresh child process (``--child``) executing
``fedpeft.simulation.run_simulation`` with the default client factory
(``LoraClientApp``: the MiniLM backbone loaded once per worker, adapters and shards
swapped per virtual client). The parent samples, every 0.5 s, the resident memory of
the child's whole process tree (driver + raylet + GCS + Ray workers + helpers, found
with ``psutil.Process.children(recursive=True)``) and reports:

* ``peak_rss_tree_bytes``: the largest sum of RSS over the tree (pages shared between
  processes — libtorch, Ray's plasma store — counted once per process: an upper bound);
* ``peak_pss_tree_bytes``: the largest sum of PSS (shared pages split between their
  users; sampled every few seconds, it reads smaps) — the honest total;
* the peak of the largest single process.

Goal: <= 4 GB for the tree.

Per-virtual-client overhead, two views (goal <= 50 ms):

* worker side: ``overhead_seconds`` = the client's time in ``LoraClientApp.train``
  minus its training loop (decode the downlink, load the adapter, take the shard,
  read the adapter back, delta, mods, encode). Measured inside the worker, per client,
  collected exactly through ``EngineHooks.on_client_done``.
* driver side: what a round costs beyond the workers' training, per client:
  ``(round wall − evaluation − Σ train_seconds / workers) / clients``. This adds
  everything the worker-side view misses: building tasks, the Ray round trip
  (pickling, object store, scheduling), decoding/validating, aggregation, the
  checkpoint, and idle workers. The evaluation after each round is excluded (it is not
  per client); the same figure with it included is reported too.

Results go to ``bench/results/fed_scale.json``. The machine is shared (2 cores):
compare numbers inside one run; load averages are recorded.
"""

from __future__ import annotations

import os

os.environ.setdefault("FEDPEFT_CACHE", "/tmp/fpcache")

import argparse
import functools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
from benchinfo import RunStamp  # noqa: E402

DEFAULT_OUTPUT = BENCH_DIR / "results" / "fed_scale.json"
GB = 1e9


# ---- memory of a process tree (parent side) ---------------------------------------------
class TreeMemorySampler(threading.Thread):
    """Samples RSS (every ``interval``) and PSS (every ``pss_every``) of a process tree."""

    def __init__(self, pid: int, interval: float = 0.5, pss_every: float = 3.0) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.pss_every = pss_every
        self.stop_event = threading.Event()
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_single_rss = 0
        self.peak_processes = 0
        self.peak_rss_by_name: dict[str, int] = {}
        self.samples: list[tuple[float, int]] = []  # (t, tree RSS), for the record
        self.start_time = time.perf_counter()

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def run(self) -> None:
        last_pss = 0.0
        while not self.stop_event.is_set():
            procs = self.tree()
            total = 0
            by_name: dict[str, int] = {}
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    name = _short_name(p)
                except psutil.Error:
                    continue
                total += rss
                by_name[name] = by_name.get(name, 0) + rss
                self.peak_single_rss = max(self.peak_single_rss, rss)
            if total > self.peak_rss:
                self.peak_rss = total
                self.peak_rss_by_name = by_name
                self.peak_processes = len(procs)
            now = time.perf_counter()
            self.samples.append((round(now - self.start_time, 2), total))
            if now - last_pss >= self.pss_every:
                last_pss = now
                pss = 0
                for p in procs:
                    try:
                        pss += p.memory_full_info().pss
                    except (psutil.Error, AttributeError):
                        continue
                self.peak_pss = max(self.peak_pss, pss)
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


def _short_name(p: psutil.Process) -> str:
    name = p.name()
    if name.startswith("ray::"):
        return "ray::worker"  # idle pool workers and actors alike
    if name.startswith("python"):
        scripts = [Path(a).name for a in p.cmdline()[1:] if a.endswith(".py")]
        if scripts and scripts[0] == "fed_scale.py":
            return "driver"
        return f"python {scripts[0]}" if scripts else "python"
    return name


# ---- one run (child side) ---------------------------------------------------------------
def child_run(args: argparse.Namespace) -> dict[str, Any]:
    import_start = time.perf_counter()
    import ray

    import fedpeft.simulation.run as sim_run
    from fedpeft.config import JobConfig
    from fedpeft.coordinator.engine import EngineHooks
    from fedpeft.simulation import run_simulation

    import_seconds = time.perf_counter() - import_start
    out_dir = Path(tempfile.mkdtemp(prefix="fed_scale_"))
    threads = args.threads if args.child == "ray" else args.inprocess_threads
    cfg = JobConfig().replace(
        {
            "federation.clients": args.clients,
            "federation.clients_per_round": args.per_round,
            "federation.rounds": args.rounds,
            "federation.backend": args.child,
            "federation.workers": args.workers,
            "federation.partition": "iid",
            "train.max_steps": args.max_steps,
            "train.batch_size": args.batch_size,
            "train.threads": threads,
            "data.max_eval_examples": args.eval_examples,
            "output": str(out_dir / "run"),
        }
    )

    per_client: list[dict[str, Any]] = []
    round_marks: dict[int, dict[str, float]] = {}
    eval_seconds: dict[int, float] = {}
    current = {"round": 0}

    def on_round_start(round_num: int, cohort: int) -> None:
        current["round"] = round_num
        round_marks[round_num] = {"start": time.perf_counter(), "cohort": cohort}

    def on_client_done(result: Any) -> None:
        m = result.metrics
        per_client.append(
            {
                "round": result.round,
                "client": result.client_id,
                "worker": result.worker,
                "ok": result.error is None,
                "client_seconds": m.get("client_seconds"),
                "train_seconds": m.get("train_seconds"),
                "overhead_seconds": m.get("overhead_seconds"),
                "payload_bytes": len(result.payload),
            }
        )
        round_marks[result.round]["last_result"] = time.perf_counter()

    def on_round_end(record: dict[str, Any]) -> None:
        round_marks[record["round"]]["end"] = time.perf_counter()

    def timed_backend_evaluate(evaluate: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(evaluate)
        def wrapper(params: Any) -> Any:
            start = time.perf_counter()
            try:
                return evaluate(params)
            finally:
                r = current["round"]
                eval_seconds[r] = eval_seconds.get(r, 0.0) + time.perf_counter() - start

        return wrapper

    # Instrumentation only: time backend.evaluate (per round) without changing it.
    original_make_backend = sim_run.make_backend

    def make_backend(cfg_: Any, factory: Any) -> Any:
        backend = original_make_backend(cfg_, factory)
        backend.evaluate = timed_backend_evaluate(backend.evaluate)
        return backend

    sim_run.make_backend = make_backend

    hooks = EngineHooks(on_round_start, on_client_done, on_round_end)
    start = time.perf_counter()
    ray_init_seconds = 0.0
    if args.child == "ray":
        ray.init(
            num_cpus=args.workers,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        ray_init_seconds = time.perf_counter() - start
    summary = run_simulation(cfg, hooks=hooks, export=False)
    sim_done = time.perf_counter()
    if args.child == "ray":
        ray.shutdown()
    end = time.perf_counter()

    records = [json.loads(x) for x in (out_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    workers = args.workers if args.child == "ray" else 1
    rounds = []
    for rec in records:
        r = rec["round"]
        clients = [c for c in per_client if c["round"] == r and c["ok"]]
        n = len(clients)
        sum_train = sum(c["train_seconds"] for c in clients)
        sum_client = sum(c["client_seconds"] for c in clients)
        wall = rec["round_seconds"]
        ev = eval_seconds.get(r, 0.0)
        marks = round_marks[r]
        overheads = sorted(c["overhead_seconds"] for c in clients)
        rounds.append(
            {
                "round": r,
                "clients_ok": rec["clients_ok"],
                "round_seconds": wall,
                "eval_seconds": ev,
                "dispatch_seconds": marks["last_result"] - marks["start"],
                "after_dispatch_seconds": marks["end"] - marks["last_result"],
                "sum_train_seconds": sum_train,
                "sum_client_seconds": sum_client,
                "mean_train_seconds": sum_train / n,
                "worker_overhead_mean_seconds": statistics.fmean(overheads),
                "worker_overhead_median_seconds": statistics.median(overheads),
                "worker_overhead_p95_seconds": overheads[int(0.95 * (n - 1))],
                "driver_overhead_per_client_seconds": (wall - ev - sum_train / workers) / n,
                "driver_overhead_per_client_incl_eval_seconds": (wall - sum_train / workers) / n,
                "beyond_client_time_per_client_seconds": (wall - ev - sum_client / workers) / n,
                "bytes_up": rec["bytes_up"],
                "bytes_down": rec["bytes_down"],
                "eval_accuracy": rec.get("eval_accuracy"),
                "train_loss": rec.get("train_loss"),
            }
        )
    adapter_params = _adapter_params(out_dir / "run")
    checkpoint = out_dir / "run" / "checkpoint"
    client_state_bytes = (checkpoint / "clients.safetensors").stat().st_size
    checkpoint_bytes = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "backend": args.child,
        "workers": workers,
        "torch_threads_per_client_app": threads,
        "import_seconds": import_seconds,
        "wall_seconds": end - start,
        "ray_init_seconds": ray_init_seconds,
        "run_simulation_seconds": sim_done - start - ray_init_seconds,
        "ray_shutdown_seconds": end - sim_done,
        "initial_eval_seconds": eval_seconds.get(0, 0.0),
        "adapter_params": adapter_params,
        "clients_with_state_in_driver": len({c["client"] for c in per_client}),
        # per-client state the engine checkpoints (held adapters only for a delta downlink)
        "client_state_checkpoint_bytes": client_state_bytes,
        "checkpoint_bytes": checkpoint_bytes,
        "rounds": rounds,
        "summary": {k: v for k, v in summary.items() if not isinstance(v, (list, dict))},
    }


def _adapter_params(run: Path) -> int:
    from safetensors.numpy import load_file

    params = load_file(str(run / "checkpoint" / "global.safetensors"))
    return int(sum(v.size for v in params.values()))


# ---- orchestration (parent side) --------------------------------------------------------
def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", backend]
    for flag in (
        "clients",
        "per_round",
        "rounds",
        "workers",
        "max_steps",
        "batch_size",
        "threads",
        "inprocess_threads",
        "eval_examples",
    ):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    load_before = os.getloadavg()
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO, text=True)
        sampler = TreeMemorySampler(proc.pid)
        sampler.start()
        try:
            rc = proc.wait(timeout=args.timeout)
        finally:
            sampler.stop()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [x for x in stdout.splitlines() if x.startswith("{")]
    if rc != 0 or not lines:
        raise RuntimeError(f"{backend} child failed (rc={rc}):\n{stdout[-3000:]}\n{stderr[-5000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    result.update(
        process_wall_seconds=time.perf_counter() - start,
        load_avg_before=load_before,
        load_avg_after=os.getloadavg(),
        peak_rss_tree_bytes=sampler.peak_rss,
        peak_pss_tree_bytes=sampler.peak_pss,
        peak_rss_single_process_bytes=sampler.peak_single_rss,
        processes_at_peak=sampler.peak_processes,
        rss_by_process_at_peak=sampler.peak_rss_by_name,
        rss_samples=sampler.samples[:: max(1, len(sampler.samples) // 200)],
    )
    return result


def headline(result: dict[str, Any]) -> dict[str, Any]:
    rounds = result["rounds"]
    return {
        "backend": result["backend"],
        "peak_rss_tree_gb": round(result["peak_rss_tree_bytes"] / GB, 3),
        "peak_pss_tree_gb": round(result["peak_pss_tree_bytes"] / GB, 3),
        "memory_goal_met_rss": result["peak_rss_tree_bytes"] <= 4 * GB,
        "worker_overhead_ms_per_client": [
            round(1e3 * r["worker_overhead_mean_seconds"], 1) for r in rounds
        ],
        "driver_overhead_ms_per_client": [
            round(1e3 * r["driver_overhead_per_client_seconds"], 1) for r in rounds
        ],
        "mean_train_ms_per_client": [round(1e3 * r["mean_train_seconds"], 1) for r in rounds],
        "round_seconds": [round(r["round_seconds"], 1) for r in rounds],
        "wall_seconds": round(result["wall_seconds"], 1),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="ray,inprocess", help="comma-separated, in order")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per Ray worker")
    parser.add_argument("--inprocess-threads", type=int, default=1)
    parser.add_argument(
        "--eval-examples", type=int, default=256, help="held-out examples per evaluation"
    )
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--child", choices=["ray", "inprocess"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child_run(args)))
        return
    stamp = RunStamp("fed_scale")
    results = []
    for backend in args.backends.split(","):
        print(f"[{backend}] load {os.getloadavg()[0]:.2f} …", file=sys.stderr, flush=True)
        result = run_backend(backend, args)
        print(f"  {json.dumps(headline(result))}", file=sys.stderr, flush=True)
        results.append(result)
    report = {
        **stamp.header(),
        "config": {
            "clients": args.clients,
            "clients_per_round": args.per_round,
            "rounds": args.rounds,
            "workers": args.workers,
            "train.max_steps": args.max_steps,
            "train.batch_size": args.batch_size,
            "train.threads (ray workers)": args.threads,
            "train.threads (in-process)": args.inprocess_threads,
            "data.max_eval_examples": args.eval_examples,
            "model": "minilm (all-MiniLM-L6-v2) + LoRA r=8 (package defaults)",
            "data": "reuters-r8, iid over the clients",
        },
        "command": [Path(sys.executable).name, *sys.argv],
        "goals": {"peak_memory_bytes": 4 * GB, "overhead_per_client_seconds": 0.05},
        "headline": [headline(r) for r in results],
        "definitions": {
            "worker_overhead": "client_seconds - train_seconds, measured in the worker "
            "(LoraClientApp.train minus train_local), mean over the round's clients",
            "driver_overhead": "(round_seconds - eval_seconds - sum(train_seconds) / workers) "
            "/ clients: everything a round costs beyond the workers' training loops",
            "peak_rss_tree": "max over 0.5 s samples of sum(RSS) over the child process and "
            "all its descendants (shared pages counted once per process)",
            "peak_pss_tree": "same with PSS, sampled every 3 s",
        },
        "notes": [
            "each backend runs in its own child process; the parent samples that child's "
            "process tree, so Ray's raylet, GCS, dashboard/monitor helpers and workers count",
            "in-process: one LoraClientApp in the driver serves every client in turn",
            "with the default dense downlink the engine keeps no held adapter per client "
            "(commit ca3b0d1); with a compressing downlink it keeps one per client ever "
            "sampled, in the driver and in every round's checkpoint",
        ],
        "runs": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["headline"], indent=2))


if __name__ == "__main__":
    main()
