"""Discrete Gaussian sampling throughput: fedpeft's vectorised sampler against opendp.

Usage::

    python bench/dp_sampler.py                  # sigmas 1, 10, 100, 1000
    python bench/dp_sampler.py --sigmas 2 50 --coords 1000000

For each sigma: the wall time of ``fedpeft.privacy.discrete_gaussian.sample_discrete_gaussian``
for ``--coords`` coordinates (median of ``--repeats`` runs, one thread), and the time of
opendp 0.16's exact sampler (``make_gaussian`` over integers) on a ``--opendp-coords``
subsample, extrapolated linearly to ``--coords`` (opendp's cost is per coordinate; the
extrapolation is marked as such in the JSON). Wall and process CPU time are both
recorded (CPU time is the steadier of the two on a loaded machine). Also the sample
variance of our draw beside the exact variance, as a sanity check of what was timed. The
load average at the start and the end is recorded: the machine is shared, so compare
timings only within one run.

Results go to ``bench/results/dp_sampler.json`` (``--output`` to change).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fedpeft  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import machine_info, source_version, utc_now

from fedpeft.privacy.discrete_gaussian import (
    acceptance_rate,
    discrete_gaussian_variance,
    sample_discrete_gaussian,
)

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "dp_sampler.json"
MEASURED = ("src/fedpeft/privacy/discrete_gaussian.py",)


def time_ours(sigma: float, coords: int, repeats: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    sample_discrete_gaussian(sigma, 1000, rng)  # warm-up
    times, cpu = [], []
    draw = np.empty(0, dtype=np.int64)
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        draw = sample_discrete_gaussian(sigma, coords, rng)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "cpu_seconds_median": statistics.median(cpu),
        "ns_per_coord": statistics.median(times) / coords * 1e9,
        "sample_variance": float(draw.astype(np.float64).var()),
        "exact_variance": discrete_gaussian_variance(sigma),
        "acceptance_rate": acceptance_rate(sigma),
    }


def time_opendp(sigma: float, subsample: int, coords: int) -> dict[str, Any]:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int)
    meas = dp.m.make_gaussian(*space, scale=sigma)
    zeros = [0] * subsample
    meas(zeros[:100])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    out = meas(zeros)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {
        "subsample_coords": subsample,
        "subsample_seconds": seconds,
        "subsample_cpu_seconds": cpu,
        "extrapolated_cpu_seconds_for_coords": cpu / subsample * coords,
        "ns_per_coord": seconds / subsample * 1e9,
        "extrapolated_seconds_for_coords": seconds / subsample * coords,
        "extrapolated": True,
        "sample_variance": float(np.var(np.asarray(out, dtype=np.float64))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 10.0, 100.0, 1000.0])
    parser.add_argument("--coords", type=int, default=1_000_000)
    parser.add_argument("--opendp-coords", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    started, load_start = utc_now(), os.getloadavg()
    source_before = source_version(MEASURED)
    rows = []
    for sigma in args.sigmas:
        ours = time_ours(sigma, args.coords, args.repeats, args.seed)
        theirs = time_opendp(sigma, args.opendp_coords, args.coords)
        speedup = theirs["extrapolated_seconds_for_coords"] / ours["seconds_median"]
        cpu_speedup = theirs["extrapolated_cpu_seconds_for_coords"] / ours["cpu_seconds_median"]
        rows.append(
            {
                "sigma": sigma,
                "fedpeft": ours,
                "opendp": theirs,
                "speedup_wall": speedup,
                "speedup_cpu": cpu_speedup,
            }
        )
        print(
            f"sigma {sigma:>7g}: fedpeft {ours['seconds_median']:.3f} s / {args.coords} coords, "
            f"opendp {theirs['extrapolated_seconds_for_coords']:.1f} s (extrapolated from "
            f"{args.opendp_coords}), x{speedup:.0f}"
        )
    report = {
        "benchmark": "dp_sampler",
        "started": started,
        "finished": utc_now(),
        "machine": machine_info(),
        "source_before": source_before,
        "source_after": source_version(MEASURED),
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "settings": {
            "coords": args.coords,
            "opendp_coords": args.opendp_coords,
            "repeats": args.repeats,
            "seed": args.seed,
            "threads": os.environ.get("OMP_NUM_THREADS"),
            "note": "opendp timed on a subsample and extrapolated linearly to `coords`",
        },
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
