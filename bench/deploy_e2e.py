"""The same job deployed (a coordinator process + 3 daemon processes over gRPC on
127.0.0.1) and simulated (``fedpeft simulate``, in-process): wall time and bytes.

MiniLM + LoRA r=8 on SST-2, 3 clients all sampled each round, 3 rounds, ComPEFT uplink
(density 0.1). Each client holds ``--examples-per-client`` training examples (the first
3x that many lines of train.txt, split in three: daemons by ``--shard i/3``, the
simulation by an IID partition), evaluation on the first ``--eval-examples`` of dev.txt.

    python bench/deploy_e2e.py --output bench/results/deploy_e2e.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sst2"
FEDPEFT = [sys.executable, "-m", "fedpeft.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def job_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--model", "minilm", "--eval-data", str(DATA / "dev.txt"),
        "--rounds", "3", "--clients-per-round", "3",
        "--codec", "compeft", "--density", str(args.density),
        "--max-eval-examples", str(args.eval_examples), "--seed", "0",
    ]  # fmt: skip


def simulate(args: argparse.Namespace, train: Path, out: Path) -> dict[str, Any]:
    cmd = [
        *FEDPEFT, "simulate", *job_flags(args), "--data", str(train), "--clients", "3",
        "--partition", "iid", "--output", str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - start
    return {"wall_seconds": wall, **json.loads((out / "summary.json").read_text())}


def deploy(args: argparse.Namespace, train: Path, out: Path) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    coordinator = [
        *FEDPEFT, "coordinator", "serve", *job_flags(args), "--port", str(port),
        "--insecure-localhost", "--state", str(out / "state.db"), "--output", str(out / "run"),
    ]  # fmt: skip
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    logs = [(out / f"{name}.log").open("wb") for name in ("coordinator", "c0", "c1", "c2")]
    procs = [subprocess.Popen(coordinator, stdout=logs[0], stderr=logs[0], env=env)]
    for i in range(3):
        daemon = [
            *FEDPEFT, "client", "run", "--coordinator", f"127.0.0.1:{port}",
            "--insecure-localhost", "--data", str(train), "--shard", f"{i}/3",
            "--state", str(out / f"client{i}"),
        ]  # fmt: skip
        procs.append(subprocess.Popen(daemon, stdout=logs[i + 1], stderr=logs[i + 1], env=env))
    codes = [p.wait(timeout=args.timeout) for p in procs]
    wall = time.perf_counter() - start
    if any(codes):
        raise RuntimeError(f"exit codes {codes}; logs in {out}")
    return {"wall_seconds": wall, **json.loads((out / "run" / "summary.json").read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples-per-client", type=int, default=300)
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=3000)
    parser.add_argument("--output", default="bench/results/deploy_e2e.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        train = tmp / "train.txt"
        lines = (DATA / "train.txt").read_text().splitlines()[: 3 * args.examples_per_client]
        train.write_text("\n".join(lines) + "\n")
        load_before = os.getloadavg()
        sim = simulate(args, train, tmp / "sim")
        dep = deploy(args, train, tmp / "deploy")
        load_after = os.getloadavg()
    keys = ("wall_seconds", "bytes_up", "bytes_down", "final_eval_accuracy", "rounds")
    result = {
        "setting": {
            "model": "minilm + LoRA r=8",
            "data": f"SST-2, {args.examples_per_client} train examples per client, "
            f"{args.eval_examples} dev examples",
            "clients": 3,
            "rounds": 3,
            "codec": f"compeft density {args.density}",
            "secagg_dp": "off in this measurement",
            "machine": f"{os.cpu_count()} cores shared with other jobs",
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "simulation": {k: sim.get(k) for k in keys},
        "deployment": {k: dep.get(k) for k in keys},
        "wall_ratio_deploy_over_sim": dep["wall_seconds"] / sim["wall_seconds"],
        "bytes_up_ratio": dep["bytes_up"] / sim["bytes_up"],
        "bytes_down_ratio": dep["bytes_down"] / sim["bytes_down"],
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
