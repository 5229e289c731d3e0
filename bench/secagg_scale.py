"""SecAgg+ at scale: 100 clients x 1M coordinates, 0% / 10% / 30% dropouts after masking.

Usage (from the repository root)::

    .venv/bin/python bench/secagg_scale.py                          # the stated measurement
    .venv/bin/python bench/secagg_scale.py --clients 20 --length 100000 --output /tmp/s.json

Every stage of one round runs in this process through ``simulate_round`` — the library's
client and server objects exchanging the real framed bytes, no transport. Each client's
input is a quantised Gaussian update (clip 0.05, 65,536 levels, bits chosen by
``sum_bits`` so the cohort's sum cannot wrap: 24), generated from a per-client seed so
that 100 x 1M inputs never sit in memory at once. The dropped clients vanish after
sending their masked input and never answer the unmask stage (``after_masking``, the
engine's ``--dropout-rate`` case: their inputs are in the sum and the server rebuilds
their self masks from their neighbours' shares). ``before_masking`` cases are measured
too (``--before``): there the clients share keys and vanish before sending a masked
input, and the server must rebuild their masking keys and remove their pairwise masks
from every surviving neighbour's vector — the heavier case for the server.

The clients' stages up to the masked input run once and every case replays their exact
bytes into a copy of the server (see ``run_cases``): the cases differ only in who drops.

Reported per case: planned degree k and threshold t, CPU seconds per stage per client
(mean and max; ``time.process_time``) and of the server (total, per stage), bytes per
stage, and whether the unmasked sum equals the sum of the survivors' quantised inputs bit
for bit. The round is planned once for the largest dropout case (``--plan-dropout``,
default 0.3: the complete graph at n = 100), as a deployment would; ``--per-case-plan``
plans each case for its own rate instead (SecAgg+'s sparse graphs). JSON to
``bench/results/secagg_scale.json`` with the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchinfo import RunStamp

from fedpeft.privacy.secagg import (
    SecAggClient,
    SecAggServer,
    plan_secagg,
    quantize,
    sum_bits,
    to_field,
)
from fedpeft.privacy.secagg.simulate import STAGES

CLIP, LEVELS = 0.05, 1 << 16
MEASURED = (
    "src/fedpeft/privacy/secagg/client.py",
    "src/fedpeft/privacy/secagg/server.py",
    "src/fedpeft/privacy/secagg/crypto.py",
    "src/fedpeft/privacy/secagg/encoding.py",
)


class LazyInputs(Mapping[int, np.ndarray]):
    """Client inputs made on demand from a per-client seed (100 x 8 MB would not fit)."""

    def __init__(self, clients: tuple[int, ...], length: int, bits: int) -> None:
        self.clients, self.length, self.bits = clients, length, bits

    def __getitem__(self, cid: int) -> np.ndarray:
        rng = np.random.default_rng([7, cid])
        ints, _ = quantize(rng.normal(0.0, 0.01, self.length), clip=CLIP, levels=LEVELS, rng=rng)
        return to_field(ints, self.bits)

    def __iter__(self) -> Iterator[int]:
        return iter(self.clients)

    def __len__(self) -> int:
        return len(self.clients)


def _stage(server: SecAggServer, replies: Mapping[int, bytes]) -> float:
    """Receive the replies and close the stage; the server's CPU seconds."""
    start = time.process_time()
    for cid, payload in replies.items():
        server.receive(cid, payload)
    server.close_stage()
    return time.process_time() - start


def run_cases(
    n: int, length: int, plan_dropout: float, cases: list[tuple[float, str]]
) -> list[dict[str, Any]]:
    """One cohort, several dropout cases.

    The clients' work up to their masked inputs does not depend on who drops later, so it
    runs once: every client advertises, shares and masks (its CPU seconds per stage are
    recorded), and each case then replays those exact bytes into a fresh copy of the
    server (``copy.deepcopy`` after the share stage) — skipping the masked inputs of the
    clients that drop before masking — and runs the unmask stage with copies of the
    clients (those that drop after masking never answer it).
    """
    clock = time.process_time
    bits = sum_bits(n, LEVELS)
    params = plan_secagg(
        range(n), length=length, bits=bits, round_num=1, seed=0, dropout_fraction=plan_dropout
    )
    inputs = LazyInputs(params.clients, length, bits)
    client_seconds: dict[str, list[float]] = {s: [] for s in STAGES}
    server_seconds: dict[str, float] = {}

    start = clock()
    server = SecAggServer(params)
    setup = clock() - start
    clients: dict[int, SecAggClient] = {}
    adverts = {}
    for cid in params.clients:
        start = clock()
        clients[cid] = SecAggClient(cid, params)
        adverts[cid] = clients[cid].advertise_keys()
        client_seconds["advertise"].append(clock() - start)
    server_seconds["advertise"] = setup + _stage(server, adverts)

    start = clock()
    relays = {cid: server.message_for(cid) for cid in server.expected()}
    out_seconds = clock() - start
    shares = {}
    for cid, msg in relays.items():
        start = clock()
        shares[cid] = clients[cid].share_keys(msg)
        client_seconds["share"].append(clock() - start)
    server_seconds["share"] = out_seconds + _stage(server, shares)

    start = clock()
    relays = {cid: server.message_for(cid) for cid in server.expected()}
    mask_out_seconds = clock() - start
    masked = {}
    total = np.zeros(length, np.uint64)
    for cid, msg in relays.items():
        x = inputs[cid]  # made outside the clock
        total += x
        start = clock()
        masked[cid] = clients[cid].masked_input(msg, x)
        client_seconds["mask"].append(clock() - start)
    after_share = copy.deepcopy(server)  # every case starts from here
    del server

    results = []
    rng = np.random.default_rng(11)
    for rate, when in cases:
        gone = sorted(rng.choice(params.clients, size=round(rate * n), replace=False).tolist())
        srv = copy.deepcopy(after_share)
        seconds = dict(server_seconds)
        replies = {c: m for c, m in masked.items() if not (when == "before_masking" and c in gone)}
        seconds["mask"] = mask_out_seconds + _stage(srv, replies)
        start = clock()
        requests = {cid: srv.message_for(cid) for cid in srv.expected()}
        unmask_out = clock() - start
        answers, unmask_clients = {}, []
        for cid, msg in requests.items():
            if when == "after_masking" and cid in gone:
                continue  # masked, then vanished
            client = copy.copy(clients[cid])  # a fresh copy per case: unmask is one-shot
            client.revealed = {}
            start = clock()
            answers[cid] = client.unmask(msg)
            unmask_clients.append(clock() - start)
        seconds["unmask"] = unmask_out + _stage(srv, answers)
        expected = total.copy()
        for c in params.clients:
            if c not in srv.survivors:
                expected -= inputs[c]
        expected &= np.uint64((1 << bits) - 1)
        exact = bool(np.array_equal(srv.result(), expected))
        per_client = {
            s: _summary(v) for s, v in {**client_seconds, "unmask": unmask_clients}.items()
        }
        results.append(
            {
                "clients": n,
                "length": length,
                "bits": bits,
                "degree_k": params.degree,
                "threshold_t": params.threshold,
                "plan_dropout_fraction": plan_dropout,
                "dropout_rate": rate,
                "dropout_when": when,
                "dropped": len(gone),
                "survivors": len(srv.survivors),
                "sum_exact": exact,
                "client_cpu_seconds_per_stage": per_client,
                "client_cpu_seconds_mean_total": sum(v["mean"] for v in per_client.values()),
                "server_cpu_seconds_per_stage": seconds,
                "server_cpu_seconds_total": sum(seconds.values()),
                "server_bytes_per_stage_in_out": {
                    **after_share.stage_bytes,
                    **{k: v for k, v in srv.stage_bytes.items() if k in ("mask", "unmask")},
                },
                "masked_vector_bytes": (length * bits + 7) // 8,
                "dense_fp32_bytes": 4 * length,
            }
        )
        print(_line(results[-1]), flush=True)
    return results


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": float(np.mean(values)) if values else 0.0,
        "max": float(np.max(values)) if values else 0.0,
        "clients": len(values),
    }


def _line(case: dict[str, Any]) -> str:
    stages = {s: round(v, 2) for s, v in case["server_cpu_seconds_per_stage"].items()}
    return (
        f"{case['dropout_when']} {case['dropout_rate']:.0%}: k={case['degree_k']} "
        f"t={case['threshold_t']} server {case['server_cpu_seconds_total']:.1f} s CPU {stages}, "
        f"client {case['client_cpu_seconds_mean_total']:.2f} s/client, "
        f"exact={case['sum_exact']}"
    )


def markdown_table(report: dict[str, Any]) -> str:
    """The table docs/secagg.md shows (a test checks the page holds exactly this)."""
    rows = [
        "| dropouts | k | t | server CPU s: advertise / share / mask / unmask = total "
        "| client CPU s (mean): share / mask / unmask | sum exact |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in report["cases"]:
        srv = c["server_cpu_seconds_per_stage"]
        cli = c["client_cpu_seconds_per_stage"]
        when = c["dropout_when"].replace("_", " ")
        rows.append(
            f"| {c['dropout_rate']:.0%} {when} ({c['dropped']} of {c['clients']}) "
            f"| {c['degree_k']} | {c['threshold_t']} "
            f"| {srv['advertise']:.2f} / {srv['share']:.2f} / {srv['mask']:.2f} / "
            f"{srv['unmask']:.2f} = **{c['server_cpu_seconds_total']:.1f}** "
            f"| {cli['share']['mean']:.2f} / {cli['mask']['mean']:.2f} / "
            f"{cli['unmask']['mean']:.3f} | {'yes' if c['sum_exact'] else 'NO'} |"
        )
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--length", type=int, default=1_000_000)
    ap.add_argument("--drops", default="0,0.1,0.3", help="dropout rates after masking")
    ap.add_argument("--plan-dropout", type=float, default=0.3, help="tolerance planned for")
    ap.add_argument("--before", default="0.3", help="dropout rates before masking")
    ap.add_argument("--per-case-plan", action="store_true", help="plan each case for its rate")
    ap.add_argument("--output", default="bench/results/secagg_scale.json")
    args = ap.parse_args()
    stamp = RunStamp("secagg_scale")
    cases = []
    todo = [(float(x), "after_masking") for x in args.drops.split(",") if x]
    todo += [(float(x), "before_masking") for x in args.before.split(",") if x]
    if args.per_case_plan:
        for rate, when in todo:
            cases += run_cases(args.clients, args.length, rate, [(rate, when)])
    else:
        cases = run_cases(args.clients, args.length, args.plan_dropout, todo)
    header = stamp.header()
    from benchinfo import source_version

    header["source_secagg"] = source_version(MEASURED)
    report = {**header, "stages": list(STAGES), "cases": cases}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    print(markdown_table(report))


if __name__ == "__main__":
    main()
