"""Bits on the wire per coordinate for the ComPEFT codec, against the entropy floor.

Usage::

    python bench/codec_bits.py                         # synthetic updates
    python bench/codec_bits.py --input update.safetensors

For each density k in {0.01, 0.05, 0.1, 0.2} it encodes the update with the
ComPEFT codec (per-tensor scope, mean-|τ| scale; plus global scope at k=0.1)
and reports: bits per coordinate on the wire (everything: frame, tensor table,
scales, positions, signs, checksum), the same for positions + signs only, the
floor ``H(k) + k`` bits per coordinate, both ratios to the floor, the
compression ratio against fp32, the relative L2 reconstruction error, and
encode / decode / encode+decode wall time (median of ``--repeats`` runs, one
thread). Dense fp32 / fp16 / bf16 are measured for comparison.

Synthetic workloads (when ``--input`` is not given):

* ``gaussian_1m``: one tensor of 2**20 i.i.d. standard normal values, the pure
  codec regime (tensor >= 100k entries) where the 5%-of-floor target applies.
* ``lora_minilm_r12``: a LoRA update of a 12-layer, 384-wide encoder (MiniLM-L12
  geometry), rank 12 on query/key/value/attention-output/intermediate/output:
  144 tensors, 995,328 coordinates, PEFT-style names. Values are Student-t with
  3 degrees of freedom (heavy-tailed, like fine-tuning deltas), scaled per
  tensor. For i.i.d. values the kept positions are uniform whatever the
  distribution, so the distribution only changes the reconstruction error.

Results go to ``bench/results/codec_bits.json`` (``--output`` to change).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, for the timings
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fedpeft  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fedpeft.compression import (
    Codec,
    CompeftCodec,
    CompeftConfig,
    DenseCodec,
    DenseConfig,
    Scope,
    wire_breakdown,
    wire_size_bits_floor,
)

DENSITIES = (0.01, 0.05, 0.1, 0.2)
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "codec_bits.json"


def gaussian_update(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"delta": rng.standard_normal(1 << 20).astype(np.float32)}


def lora_update(seed: int = 0, layers: int = 12, hidden: int = 384, rank: int = 12) -> dict:
    """A MiniLM-L12-shaped LoRA update with Student-t (ν=3) values."""
    rng = np.random.default_rng(seed)
    inter = 4 * hidden
    modules = {
        "attention.self.query": (hidden, hidden),
        "attention.self.key": (hidden, hidden),
        "attention.self.value": (hidden, hidden),
        "attention.output.dense": (hidden, hidden),
        "intermediate.dense": (inter, hidden),
        "output.dense": (hidden, inter),
    }
    update: dict[str, np.ndarray] = {}
    for layer in range(layers):
        for module, (out_features, in_features) in modules.items():
            prefix = f"base_model.model.encoder.layer.{layer}.{module}"
            for part, shape in (("lora_A", (rank, in_features)), ("lora_B", (out_features, rank))):
                scale = 10.0 ** rng.uniform(-4, -2)
                values = rng.standard_t(3, size=shape) * scale
                update[f"{prefix}.{part}.weight"] = values.astype(np.float32)
    return update


def load_update(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    out = {}
    for name, value in tensors.items():
        if not np.issubdtype(value.dtype, np.floating):
            raise SystemExit(f"{path}: tensor {name!r} has non-float dtype {value.dtype}")
        out[name] = value.astype(np.float32)
    return out


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure(codec: Codec, update: dict[str, np.ndarray], repeats: int) -> dict[str, Any]:
    n = sum(v.size for v in update.values())
    data = codec.encode(update)
    decoded = codec.decode(data)
    num = sum(float(np.sum((decoded[k] - v).astype(np.float64) ** 2)) for k, v in update.items())
    den = sum(float(np.sum(v.astype(np.float64) ** 2)) for v in update.values())
    row: dict[str, Any] = {
        "codec": codec.name,
        "bytes": len(data),
        "bits_per_coord": 8 * len(data) / n,
        "compression_vs_fp32": 4 * n / len(data),
        "relative_l2_error": (num / den) ** 0.5 if den else 0.0,
        "encode_ms": median_ms(lambda: codec.encode(update), repeats),
        "decode_ms": median_ms(lambda: codec.decode(data), repeats),
        "encode_decode_ms": median_ms(lambda: codec.decode(codec.encode(update)), repeats),
    }
    if isinstance(codec, CompeftCodec):
        k = codec.config.density
        parts = wire_breakdown(data)
        floor = wire_size_bits_floor(n, k) / n
        payload = 8 * (parts["positions"] + parts["signs"]) / n
        row.update(
            density=k,
            scope=codec.config.scope.value,
            kept=parts["kept"],
            rice_parameter=parts["rice_parameter"],
            header_bytes=parts["header"],
            scale_bytes=parts["scales"],
            payload_bits_per_coord=payload,
            floor_bits_per_coord=floor,
            ratio_to_floor=row["bits_per_coord"] / floor,
            payload_ratio_to_floor=payload / floor,
        )
    else:
        row["dtype"] = codec.config.dtype  # type: ignore[attr-defined]
    return row


def codecs() -> list[Codec]:
    out: list[Codec] = [CompeftCodec(CompeftConfig(density=k)) for k in DENSITIES]
    out.append(CompeftCodec(CompeftConfig(density=0.1, scope=Scope.GLOBAL)))
    out += [DenseCodec(DenseConfig(d)) for d in ("fp32", "fp16", "bf16")]
    return out


def print_table(workload: str, n: int, rows: list[dict[str, Any]]) -> None:
    print(f"\n{workload}: {n:,} coordinates")
    print(
        f"{'codec':<27}{'bits/coord':>11}{'payload':>9}{'floor':>8}{'ratio':>7}"
        f"{'x fp32':>8}{'rel.err':>9}{'enc+dec ms':>12}"
    )
    for r in rows:
        if r["codec"] == "compeft":
            label = f"compeft k={r['density']:g} {r['scope']}"
            extra = (
                f"{r['payload_bits_per_coord']:>9.4f}{r['floor_bits_per_coord']:>8.4f}"
                f"{r['ratio_to_floor']:>7.3f}"
            )
        else:
            label = f"dense {r['dtype']}"
            extra = f"{'':>9}{'':>8}{'':>7}"
        print(
            f"{label:<27}{r['bits_per_coord']:>11.4f}{extra}{r['compression_vs_fp32']:>8.1f}"
            f"{r['relative_l2_error']:>9.4f}{r['encode_decode_ms']:>12.1f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, help="safetensors file of a real update")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (median)")
    args = parser.parse_args(argv)

    if args.input is not None:
        workloads = {args.input.name: load_update(args.input)}
    else:
        workloads = {"gaussian_1m": gaussian_update(), "lora_minilm_r12": lora_update()}

    report: dict[str, Any] = {
        "benchmark": "codec_bits",
        "input": str(args.input) if args.input else "synthetic",
        "cpu_count": os.cpu_count(),
        "threads": "one (OMP/OPENBLAS/MKL_NUM_THREADS=1; the codecs use no BLAS)",
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "repeats": args.repeats,
        "workloads": [],
    }
    for workload, update in workloads.items():
        n = sum(v.size for v in update.values())
        rows = [measure(codec, update, args.repeats) for codec in codecs()]
        report["workloads"].append(
            {"name": workload, "coordinates": n, "tensors": len(update), "results": rows}
        )
        print_table(workload, n, rows)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
