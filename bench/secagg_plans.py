"""SecAgg+ degree and threshold as the planner picks them now (even sparse degrees only).

Usage (from the repository root)::

    .venv/bin/python bench/secagg_plans.py

Computed, not timed: ``plan_secagg`` for the cohorts of docs/secagg.md's tables and a
sweep of cohort sizes and tolerated dropout rates; for each, the degree ``k``, threshold
``t``, whether the graph is complete, and the per-client protocol bytes of one round from
the frame sizes (docs/secagg.md, "On the wire") for ``--length`` coordinates of
``--bits`` bits with every client surviving. Also the largest cohort that still gets the
complete graph at each rate. JSON to ``bench/results/secagg_plans.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchinfo import RunStamp

from fedpeft.errors import ConfigError
from fedpeft.privacy.secagg import plan_secagg

COHORTS = (16, 50, 100, 128, 190, 200, 500, 1000)
RATES = (0.0, 0.1, 0.2, 0.3)


def plan(n: int, rate: float, length: int, bits: int) -> dict[str, Any]:
    try:
        p = plan_secagg(
            list(range(n)), length=length, bits=bits, round_num=1, seed=0, dropout_fraction=rate
        )
    except ConfigError as exc:
        return {"clients": n, "tolerated_dropout": rate, "refused": str(exc)}
    k = p.degree
    up = 138 + (46 + 94 * k) + (42 + math.ceil(length * bits / 8)) + (46 + 25 * k)
    down = (46 + 72 * k) + (46 + 94 * k) + (54 + 8 * k + 8 * n)
    return {
        "clients": n,
        "tolerated_dropout": rate,
        "k": k,
        "t": p.threshold,
        "complete_graph": k == n - 1,
        "client_bytes_up": up,
        "client_bytes_down": down,
        "protocol_bytes_up_beyond_vector": up - math.ceil(length * bits / 8),
    }


def largest_complete(rate: float, length: int, bits: int, top: int = 400) -> int | None:
    best = None
    for n in range(3, top + 1):
        row = plan(n, rate, length, bits)
        if row.get("complete_graph"):
            best = n
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=1_000_000)
    parser.add_argument("--bits", type=int, default=24)
    parser.add_argument("--output", default="bench/results/secagg_plans.json")
    args = parser.parse_args()
    stamp = RunStamp("secagg_plans")
    rows = [plan(n, r, args.length, args.bits) for n in COHORTS for r in RATES]
    report = {
        **stamp.header(),
        "what": "plan_secagg's k and t (computed, not timed); bytes from the frame sizes",
        "length": args.length,
        "bits": args.bits,
        "plans": rows,
        "largest_complete_graph_cohort": {
            str(r): largest_complete(r, args.length, args.bits) for r in RATES
        },
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(row)
    print(report["largest_complete_graph_cohort"])


if __name__ == "__main__":
    main()
