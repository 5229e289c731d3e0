"""``run_audit``: run a job as the coordinator, attack what it held, write the report."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedpeft.audit.capture import ObservedJob, RoundView, run_observed
from fedpeft.audit.labels import head_keys, infer_labels, true_labels
from fedpeft.audit.scoring import score_cohorts
from fedpeft.config import JobConfig, TrainConfig
from fedpeft.errors import ConfigError
from fedpeft.rundir import strict_json

#: The attacks ``--attacks`` accepts, each with what it measures.
ATTACKS: dict[str, str] = {
    "labels": "label inference from the classification head's update (iDLG / LLG style)",
}
REPORT_VERSION = 1


def parse_attacks(text: str) -> list[str]:
    """``--attacks``: names joined by commas, each one of :data:`ATTACKS`."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError("--attacks", f"name at least one of {', '.join(ATTACKS)}")
    for name in names:
        if name not in ATTACKS:
            raise ConfigError(
                "--attacks", f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}"
            )
    return list(dict.fromkeys(names))


def absent_drift(train: TrainConfig, lr: float, num_examples: float) -> float:
    """How far an absent class's bias falls in one local run under AdamW: the learning rate
    summed over the run's schedule (each step moves it by about lr; see
    :mod:`fedpeft.audit.labels`). Everything here is the coordinator's to know."""
    from fedpeft.training.loop import lr_lambda, planned_steps

    steps = planned_steps(max(1, math.ceil(num_examples)), train)
    factor = lr_lambda(steps, train)
    return lr * sum(factor(t) for t in range(steps))


@dataclass
class _Cohort:
    true_sets: list[np.ndarray]
    guess_sets: list[np.ndarray]
    true_hist: list[np.ndarray]
    guess_hist: list[np.ndarray]
    clients: list[int]


def label_attack(cfg: JobConfig, job: ObservedJob) -> dict[str, Any]:
    """Label inference on every collected round: per client on plain updates, from the sum
    under SecAgg; scored against each client's true labels (:mod:`fedpeft.audit.scoring`)."""
    if job.labels is None or not job.label_names:
        raise ConfigError("--attacks", "labels needs a classification job (a labelled --data)")
    classes = len(job.label_names)
    cohorts: list[_Cohort] = []
    per_client: list[dict[str, Any]] = []
    for view in job.views:
        if view.failed is not None:
            continue
        cohort = _attack_view(cfg, view, job, classes)
        cohorts.append(cohort)
        for i, cid in enumerate(cohort.clients):
            per_client.append(
                {
                    "round": view.round_num,
                    "client": cid,
                    "true_labels": np.flatnonzero(cohort.true_sets[i]).tolist(),
                    "recovered_labels": np.flatnonzero(cohort.guess_sets[i]).tolist(),
                    "true_histogram": np.round(cohort.true_hist[i], 4).tolist(),
                    "recovered_histogram": np.round(cohort.guess_hist[i], 4).tolist(),
                }
            )
    if not cohorts:
        raise ConfigError("--rounds", "no round completed: nothing the coordinator held")
    scores = score_cohorts(
        [np.array(c.true_sets) for c in cohorts],
        [np.array(c.guess_sets) for c in cohorts],
        [np.array(c.true_hist) for c in cohorts],
        [np.array(c.guess_hist) for c in cohorts],
    )
    return {**scores, "label_names": job.label_names, "clients": per_client}


def _attack_view(cfg: JobConfig, view: RoundView, job: ObservedJob, classes: int) -> _Cohort:
    labels = job.labels
    assert labels is not None
    out = _Cohort([], [], [], [], [])
    if view.updates is not None:  # plain: each client's own update
        for cid, update in sorted(view.updates.items()):
            weight, bias = head_keys(update.delta, classes)
            lr = view.lr.get(cid) or cfg.train.lr
            guess = infer_labels(
                update.delta[bias],
                update.delta[weight],
                absent_drift(cfg.train, lr, update.num_examples),
            )
            _add(out, cid, guess.present, guess.histogram, labels, job.shards[cid], classes)
        return out
    total = view.total
    assert total is not None
    summed = _summed_clients(view)
    weight, bias = head_keys(total.mean, classes)
    lrs = [view.lr.get(c) or cfg.train.lr for c in summed] or [cfg.train.lr]
    # the mean client's run: the sum's weight is the summed (capped) example counts
    mean_examples = total.total_weight / max(1, view.summed_clients)
    guess = infer_labels(
        total.mean[bias],
        total.mean[weight],
        absent_drift(cfg.train, float(np.mean(lrs)), mean_examples),
    )
    for cid in summed:  # one guess for all: the sum says nothing about who holds what
        _add(out, cid, guess.present, guess.histogram, labels, job.shards[cid], classes)
    return out


def _summed_clients(view: RoundView) -> list[int]:
    """The clients whose updates a secure round's sum holds: the cohort less the rejected
    and the dropped (the coordinator learns both in the protocol)."""
    gone = {int(k) for k in view.record.get("rejected", {})}
    dropped = view.record.get("secagg_dropped", [])
    if isinstance(dropped, list):
        gone |= {int(c) for c in dropped}
    return [c for c in view.cohort if c not in gone]


def _add(
    out: _Cohort,
    cid: int,
    present: np.ndarray,
    histogram: np.ndarray,
    labels: np.ndarray,
    shard: np.ndarray,
    classes: int,
) -> None:
    true_set, true_hist = true_labels(labels, shard, classes)
    out.clients.append(cid)
    out.true_sets.append(true_set)
    out.guess_sets.append(present)
    out.true_hist.append(true_hist)
    out.guess_hist.append(histogram)


def run_audit(cfg: JobConfig, attacks: list[str], *, force: bool = False) -> dict[str, Any]:
    """Run ``cfg`` under observation, run ``attacks`` on what the coordinator held, and
    write ``report.json`` and ``report.png`` into the run folder (``cfg.output``)."""
    if "labels" in attacks:
        _check_label_job(cfg)
    job = run_observed(cfg, force=force)
    setting = _setting(cfg)
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "setting": setting,
        "view": _view(cfg, job),
        "clients": cfg.federation.clients,
        "clients_per_round": cfg.federation.clients_per_round,
        "rounds": len(job.views),
        "model": cfg.model.name,
        "data": cfg.data.train,
        "partition": cfg.federation.partition,
        "epsilon": job.summary.get("epsilon"),
        "seconds": round(job.seconds, 1),
        "attacks": {},
        "rows": [],
    }
    if "labels" in attacks:
        result = label_attack(cfg, job)
        report["attacks"]["labels"] = result
        # the acceptance keys at the top level, as the issue names them
        for key in ("label_set_recovery", "chance_label_set_recovery"):
            report[key] = result[key]
        report["rows"] += [
            _row("labels", setting, "label-set recovery (Jaccard)", result, "label_set_recovery"),
            _row("labels", setting, "label-set exact match", result, "label_set_exact"),
            _row("labels", setting, "histogram L1 error", result, "label_histogram_l1"),
        ]
    out = Path(cfg.output)
    (out / "report.json").write_text(json.dumps(strict_json(report), indent=2) + "\n")
    from fedpeft.audit.report import plot_report

    plot_report(report, out / "report.png")
    return report


def _row(
    attack: str, setting: str, metric: str, result: dict[str, Any], key: str
) -> dict[str, Any]:
    return {
        "attack": attack,
        "setting": setting,
        "metric": metric,
        "key": key,
        "value": result[key],
        "chance": result.get(f"chance_{key}"),
    }


def _view(cfg: JobConfig, job: ObservedJob) -> str:
    """What the attacks read, from what was captured (not from the config)."""
    secure = [v.secure for v in job.views]
    if secure and all(secure):
        return "the decoded sum of each round (SecAgg+)"
    if cfg.secagg.enabled:  # the job said SecAgg and the coordinator saw updates: a bug
        raise RuntimeError("a --secagg job handed the coordinator individual updates")
    return "each client's decoded update"


def _setting(cfg: JobConfig) -> str:
    parts = ["secagg" if cfg.secagg.enabled else "plain"]
    if cfg.dp.enabled:
        parts.append(f"dp eps={cfg.dp.epsilon}")
    return " + ".join(parts)


def _check_label_job(cfg: JobConfig) -> None:
    """Refuse, before any model loads, a job whose clients train no output layer."""
    if cfg.lora.modules_to_save == []:
        raise ConfigError(
            "lora.modules_to_save",
            "label inference reads the output layer's update; this job trains none",
        )
