"""One real client LoRA update from fedpeft, and the ComPEFT wire size on it.

Usage::

    FEDPEFT_CACHE=/tmp/fpcache python bench/real_update.py
    FEDPEFT_CACHE=/tmp/fpcache python bench/real_update.py --client 3 --skip-codec

Builds :class:`fedpeft.client.app.LoraClientApp` on SST-2 train (MiniLM + the package's
LoRA defaults), partitions it exactly as the federated benchmark does (100 clients,
Dirichlet(0.5), seed 0), and runs one first-round task for one client the way
``RoundEngine.make_task`` builds it: full dense fp32 downlink of the initial adapter,
the client's shard as indices, the engine's per-(round, client) seed. The dense fp32
uplink payload is decoded back: that is the update Δ = θ_local − θ_start (LoRA A/B plus
the classifier head that peft trains through ``modules_to_save``). It is written to
``bench/results/real_update.safetensors``.

Then ``bench/codec_bits.py --input <that file> --output bench/results/codec_bits_real.json``
runs in a fresh interpreter (one thread, as for the synthetic results, which it leaves
untouched), and this script adds to that JSON where the update came from and the goal
checks: total bits per coordinate within 5% of the floor ``H(k) + k`` plus the header
(frame, tensor table, scales), and >= 40x smaller than fp32 at k = 0.1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fedpeft  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fedpeft.client.app import LoraClientApp
from fedpeft.compression import FULL_WEIGHTS_CODEC, make_codec
from fedpeft.config import JobConfig
from fedpeft.coordinator.engine import client_seed
from fedpeft.protocol.messages import ClientState, TrainTask
from fedpeft.simulation.run import make_shards

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
DEFAULT_DATA = BENCH.parents[1] / "shared" / "data"  # ../shared/data from the project root
FLOOR_SLACK = 1.05  # goal: within 5% of the entropy floor (plus the header)
RATIO_GOAL = 40.0  # goal: >= 40x smaller than fp32 at k = 0.1


def job_config(args: argparse.Namespace) -> JobConfig:
    """The federated benchmark's settings (bench/fed_accuracy.py), for one client."""
    return JobConfig().replace(
        {
            "model.name": "minilm",
            "data.train": str(args.data_dir / "sst2" / "train.txt"),
            "data.max_length": 64,
            "train.epochs": 1.0,
            "train.seed": args.seed,
            "train.threads": args.threads,
            "federation.clients": args.clients,
            "federation.partition": "dirichlet",
            "federation.alpha": args.alpha,
            "codec.name": "dense",
            "codec.dtype": "fp32",
            "output": "runs/real-update-unused",  # LoraClientApp writes nothing
        }
    )


def real_update(cfg: JobConfig, client: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train one virtual client for one round; return its decoded update and facts."""
    shards, _ = make_shards(cfg)
    app = LoraClientApp(cfg, name="bench")
    round_num = 1
    task = TrainTask(
        round=round_num,
        client_id=client,
        seed=client_seed(cfg.train.seed, round_num, client),
        downlink=FULL_WEIGHTS_CODEC.encode(app.initial_state()),  # first contact: full, fp32
        downlink_is_delta=False,
        version=round_num - 1,
        state=ClientState(),
        indices=shards[client],
    )
    start = time.perf_counter()
    result = app.train(task)
    seconds = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"client {client} failed: {result.error}")
    delta = make_codec("dense").decode(result.payload)
    labels = app.train_data.labels  # classification: (n,) int64 tensor
    facts: dict[str, Any] = {
        "client_id": client,
        "shard_examples": int(result.num_examples),
        "train_steps": int(result.metrics["train_steps"]),
        "train_loss": float(result.metrics["train_loss"]),
        "client_seconds": seconds,
        "payload_bytes_dense_fp32": len(result.payload),
        "coordinates": int(sum(v.size for v in delta.values())),
        "tensors": len(delta),
        "tensor_groups": group_sizes(delta),
    }
    if labels is not None:
        counts = np.bincount(labels.numpy()[shards[client]], minlength=int(labels.max()) + 1)
        facts["shard_label_counts"] = counts.tolist()
    return delta, facts


def group_sizes(delta: dict[str, np.ndarray]) -> dict[str, int]:
    """Coordinates per kind of tensor (LoRA A, LoRA B, head modules saved in full)."""
    groups: dict[str, int] = {}
    for name, value in delta.items():
        kind = "lora_A" if ".lora_A." in name else "lora_B" if ".lora_B." in name else "head"
        groups[kind] = groups.get(kind, 0) + int(value.size)
    return groups


def goal_checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per ComPEFT row: bits/coord vs floor, the header allowance, the 40x goal."""
    workload = report["workloads"][0]
    n = workload["coordinates"]
    checks = []
    for row in workload["results"]:
        if row["codec"] != "compeft":
            continue
        floor = row["floor_bits_per_coord"]
        header_bits = 8 * (row["header_bytes"] + row["scale_bytes"]) / n
        allowed = FLOOR_SLACK * floor + header_bits
        check = {
            "density": row["density"],
            "scope": row["scope"],
            "bits_per_coord": row["bits_per_coord"],
            "payload_bits_per_coord": row["payload_bits_per_coord"],
            "floor_bits_per_coord": floor,
            "header_and_scale_bits_per_coord": header_bits,
            "ratio_to_floor": row["ratio_to_floor"],
            "payload_ratio_to_floor": row["payload_ratio_to_floor"],
            "compression_vs_fp32": row["compression_vs_fp32"],
            "relative_l2_error": row["relative_l2_error"],
            "within_5pct_of_floor_plus_header": row["bits_per_coord"] <= allowed,
        }
        if row["density"] == 0.1:
            check["ratio_goal_40x_met"] = row["compression_vs_fp32"] >= RATIO_GOAL
        checks.append(check)
    return checks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--client", type=int, default=0, help="which virtual client trains")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--update", type=Path, default=RESULTS / "real_update.safetensors")
    parser.add_argument("--output", type=Path, default=RESULTS / "codec_bits_real.json")
    parser.add_argument("--repeats", type=int, default=5, help="codec timing repeats")
    parser.add_argument("--skip-codec", action="store_true", help="only write the update")
    args = parser.parse_args(argv)

    from safetensors.numpy import save_file

    cfg = job_config(args)
    delta, facts = real_update(cfg, args.client)
    args.update.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: json.dumps(v) for k, v in facts.items()}  # safetensors metadata: str -> str
    save_file({k: np.ascontiguousarray(v) for k, v in delta.items()}, str(args.update), meta)
    print(
        f"client {args.client}: {facts['shard_examples']} examples, {facts['train_steps']} steps, "
        f"{facts['coordinates']:,} coordinates in {facts['tensors']} tensors -> {args.update}"
    )
    if args.skip_codec:
        return

    # A fresh interpreter: codec_bits.py pins BLAS/OpenMP to one thread before numpy loads.
    command = [
        sys.executable,
        str(BENCH / "codec_bits.py"),
        "--input",
        str(args.update),
        "--output",
        str(args.output),
        "--repeats",
        str(args.repeats),
    ]
    subprocess.run(command, check=True)
    report = json.loads(args.output.read_text())
    report["command"] = " ".join(command)
    report["real_update"] = {
        "source": "LoraClientApp.train, round 1, dense fp32 uplink decoded",
        "model": cfg.model.name,
        "data": cfg.data.train,
        "lora": {"r": cfg.lora.r, "alpha": cfg.lora.alpha},
        "train": {"lr": cfg.train.lr, "batch_size": cfg.train.batch_size, "epochs": 1.0},
        "partition": f"dirichlet(alpha={args.alpha}) over {args.clients} clients, seed {args.seed}",
        **facts,
    }
    report["goals"] = {
        "floor_rule": f"bits_per_coord <= {FLOOR_SLACK} * (H(k) + k) + header/scale bits",
        "ratio_rule": f"compression_vs_fp32 >= {RATIO_GOAL} at k = 0.1",
        "checks": goal_checks(report),
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    for c in report["goals"]["checks"]:
        print(
            f"k={c['density']:<5g} {c['scope']:<10} {c['bits_per_coord']:.4f} bit/coord, floor "
            f"{c['floor_bits_per_coord']:.4f} (x{c['ratio_to_floor']:.3f}), "
            f"{c['compression_vs_fp32']:.1f}x fp32, ok={c['within_5pct_of_floor_plus_header']}"
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
