"""``run_simulation``: a whole federated job on the in-process or Ray backend."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fedpeft.aggregation import make_strategy
from fedpeft.client.app import LoraClientApp
from fedpeft.config import JobConfig
from fedpeft.coordinator.engine import EngineHooks, RoundEngine, checkpoint_exists
from fedpeft.coordinator.sampling import ClientSampler
from fedpeft.coordinator.schedule import RoundConfig
from fedpeft.data import ClassificationData, describe, partition
from fedpeft.errors import ConfigError
from fedpeft.models import resolve_model_path
from fedpeft.protocol.codecs import downlink_codec, uplink_codec
from fedpeft.protocol.messages import ClientApp
from fedpeft.rundir import RunDir, atomic_write_bytes
from fedpeft.simulation import failures
from fedpeft.training.setup import load_job_data

log = logging.getLogger(__name__)

AppFactory = Callable[[str], ClientApp]


def make_shards(cfg: JobConfig) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Split the training set over the virtual clients (seeded)."""
    data = load_job_data(cfg)
    fed = cfg.federation
    if isinstance(data.train, ClassificationData):
        labels = np.asarray(data.train.labels)
    else:
        if fed.partition != "iid":
            raise ConfigError(
                "federation.partition",
                f"{fed.partition!r} needs labels; instruction data supports only 'iid'",
            )
        labels = np.zeros(len(data.train), dtype=np.int64)
    shards = partition(
        labels,
        fed.clients,
        fed.partition,
        alpha=fed.alpha,
        shards_per_client=fed.shards_per_client,
        seed=cfg.train.seed,
    )
    meta = {
        "task": data.task.value,
        "label_names": data.label_names,
        "model_path": resolve_model_path(cfg.model.name, cfg.model.cache_dir),
        "partition": describe(shards, labels),
        "eval_examples": 0 if data.eval is None else len(data.eval),
    }
    return shards, meta


def lora_app_factory(cfg: JobConfig) -> AppFactory:
    if cfg.adapter.kind == "offsite":  # checks the emulator against the backbone here, once
        from fedpeft.client.offsite import offsite_app_factory

        return offsite_app_factory(cfg)
    return functools.partial(_make_lora_app, cfg)


def _make_lora_app(cfg: JobConfig, name: str) -> ClientApp:
    return LoraClientApp(cfg, name=name)


def make_backend(cfg: JobConfig, factory: AppFactory) -> Any:
    fed = cfg.federation
    if fed.backend == "ray":
        from fedpeft.simulation.ray_backend import RayBackend

        return RayBackend(
            factory,
            workers=fed.workers,
            cpus_per_worker=fed.cpus_per_worker,
            gpus_per_worker=fed.gpus_per_worker,
            address=fed.ray_address,
            retries=fed.worker_retries,
        )
    from fedpeft.simulation.inprocess import InProcessBackend

    return InProcessBackend(factory)


def engine_settings(cfg: JobConfig) -> dict[str, Any]:
    """The RoundEngine arguments a job's config decides (strategy, codecs, rounds, seeds,
    client schedule): shared by the simulation and the gRPC coordinator, which add their
    own backend, sampler, shards and run folder."""
    fed = cfg.federation
    return {
        "strategy": make_strategy(fed),
        "uplink": uplink_codec(cfg.codec),
        "downlink": downlink_codec(cfg.codec),
        "chain_downlink": cfg.codec.downlink_mode == "chain",
        "rounds": fed.rounds,
        "seed": cfg.train.seed,
        "eval_every": fed.eval_every,
        "min_fit_clients": fed.min_fit_clients,
        "ema_decay": fed.server_ema,
        "calibration": fed.calibration,
        "calibration_clients": fed.calibration_clients,
        "client_config": RoundConfig(
            {"proximal_mu": fed.proximal_mu, "logit_adjustment": fed.logit_adjustment},
            lr=cfg.train.lr,
            rounds=fed.rounds,
            schedule=fed.client_lr_schedule,
            final=fed.client_lr_final,
            warmup=fed.client_lr_warmup_rounds,
        ),
    }


def check_secagg_plan(cfg: JobConfig) -> None:
    """Refuse, before any round, a cohort size and tolerated dropout for which SecAgg+ has
    no threshold and neighbour graph that completes (Flower's SecAgg+ halts silently)."""
    from fedpeft.privacy.secagg import plan_secagg

    k = cfg.federation.clients_per_round
    try:
        plan_secagg(
            list(range(k)),
            length=1,
            bits=32,
            round_num=1,
            seed=0,
            dropout_fraction=cfg.secagg.tolerated_dropout,
        )
    except ConfigError as exc:
        raise ConfigError("secagg.tolerated_dropout", str(exc)) from exc


def privacy_settings(
    cfg: JobConfig, run_path: Path, shard_sizes: list[int] | None = None
) -> dict[str, Any]:
    """The RoundEngine's ``secure`` (SecAgg+) and ``privacy`` (DP) arguments of a job.
    ``shard_sizes`` (simulation) sets the automatic weight cap: the largest client."""
    from fedpeft.coordinator.secure import SecureRound, auto_bits

    out: dict[str, Any] = {"secure": None, "privacy": None}
    sa = cfg.secagg
    if sa.enabled:
        check_secagg_plan(cfg)
        compressed = cfg.codec.name != "dense"
        weight_cap = sa.weight_cap or max(shard_sizes or [1000])
        out["secure"] = SecureRound(
            tolerated_dropout=sa.tolerated_dropout,
            bits=sa.bits or auto_bits(compressed, cfg.federation.clients_per_round),
            clip_range=sa.clip_range,
            weight_cap=max(1, weight_cap),
            density=cfg.codec.density if compressed else 1.0,
            seed=cfg.train.seed,
        )
    if cfg.dp.enabled:
        from fedpeft.coordinator.dp import make_dp_controller

        distributed = cfg.dp.mode == "distributed" or (cfg.dp.mode == "auto" and sa.enabled)
        if sa.enabled and not distributed:
            raise ConfigError(
                "dp.mode", "central DP needs individual updates; with secagg use distributed"
            )
        out["privacy"] = make_dp_controller(cfg, run_path, distributed=distributed)
    return out


def run_simulation(
    cfg: JobConfig,
    *,
    resume: bool = False,
    hooks: EngineHooks | None = None,
    app_factory: AppFactory | None = None,
    export: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the job; writes the run folder and returns the summary."""
    start = time.perf_counter()
    run = RunDir(cfg.output)
    shards, meta = make_shards(cfg)
    if cfg.federation.calibration != "none" and meta["task"] != "classification":
        raise ConfigError(
            "federation.calibration",
            f"{cfg.federation.calibration!r} calibrates a classifier; this job is {meta['task']}",
        )
    if resume:
        if not checkpoint_exists(run.path):
            raise ConfigError("--resume", f"{run.path} has no checkpoint to resume from")
        summary_prev = _read_json(run.path / "summary.json")
        run.create(cfg, {**run.meta(), **{k: meta[k] for k in ("task", "label_names")}})
    else:
        summary_prev = {}
        run.create(cfg, meta)
        run.rewrite_metrics([])

    # before any worker loads a model: a DP target no noise can meet is refused here
    protection = privacy_settings(cfg, run.path, [len(s) for s in shards])
    backend = make_backend(cfg, app_factory or lora_app_factory(cfg))
    if cfg.secagg.enabled and cfg.secagg.dropout_rate > 0:
        from fedpeft.simulation.dropout import DropoutBackend

        backend = DropoutBackend(
            backend, cfg.secagg.dropout_rate, cfg.secagg.dropout_stage, cfg.train.seed
        )
    try:
        fed = cfg.federation
        engine = RoundEngine(
            backend=backend,
            sampler=ClientSampler(fed.clients, fed.clients_per_round, fed.sampling, cfg.train.seed),
            shards=shards,
            run=run,
            hooks=failures.watch(hooks),  # stops a run whose clients all raise one error
            **engine_settings(cfg),
            **protection,
        )
        if resume:
            engine.resume()
            initial = {k: v for k, v in summary_prev.items() if k.startswith("initial_")}
        else:
            initial = {f"initial_{k}": v for k, v in engine.start_fresh().items()}
            # kept beside the checkpoint so a resumed run still reports round 0
            atomic_write_bytes(run.path / "summary.json", json.dumps(initial).encode())
        engine.run()
        failures.check_run(run.read_metrics())  # every round failed: an error, not exit 0
        final_params = engine.output_params
    except BaseException:
        backend.shutdown()
        raise
    finally:
        if protection["privacy"] is not None:
            protection["privacy"].close()

    # Stopping the backend (Ray: killing workers, stopping its daemons) is a second or two
    # of mostly waiting; the outputs are written meanwhile.
    with _in_background(backend.shutdown, "fedpeft-backend-shutdown"):
        import torch

        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in final_params.items()}
        run.save_state(state)
        records = run.read_metrics()
        plot_curves(records, run.path / "curves.png")
        if export:
            from fedpeft.export import export_adapter

            export_adapter(run.path, run.path / "adapter")
    summary = summarize(records, initial, time.perf_counter() - start, summary_prev)
    # evaluation is on the first data.max_eval_examples held-out examples: say how many
    summary["eval_examples"] = meta["eval_examples"]
    summary["max_eval_examples"] = cfg.data.max_eval_examples
    if engine.stopped is not None:
        summary["stopped"] = engine.stopped
    atomic_write_bytes(run.path / "summary.json", json.dumps(summary, indent=2).encode())
    return summary


@contextlib.contextmanager
def _in_background(fn: Callable[[], None], name: str) -> Iterator[None]:
    """Run ``fn`` in a thread while the block runs; join it and re-raise its error after."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if errors:
        raise errors[0]


def summarize(
    records: list[dict[str, Any]],
    initial: dict[str, Any],
    seconds: float,
    previous: dict[str, Any],
) -> dict[str, Any]:
    evals = [r for r in records if "eval_accuracy" in r or "eval_loss" in r]
    last_eval = evals[-1] if evals else {}
    summary: dict[str, Any] = {
        **initial,
        "rounds": len(records),
        "final_round": records[-1]["round"] if records else 0,
        "bytes_up": sum(r["bytes_up"] for r in records),
        "bytes_down": sum(r["bytes_down"] for r in records),
        "wall_seconds": seconds + float(previous.get("wall_seconds", 0.0)),
    }
    summary.update({f"final_{k}": v for k, v in last_eval.items() if k.startswith("eval_")})
    # classifier calibration: its own traffic (not a round's), and what it changed
    for key in ("calibration_bytes_up", "calibration_bytes_down"):
        if any(key in r for r in records):
            summary[key] = sum(int(r.get(key, 0)) for r in records)
    # privacy: the budget spent (the last line's epsilon covers every recorded round)
    with_eps = [r for r in records if "epsilon" in r]
    if with_eps:
        summary["epsilon"] = with_eps[-1]["epsilon"]
        summary["dp_delta"] = with_eps[-1]["dp_delta"]
        summary["dp_noise_multiplier"] = with_eps[-1]["dp_noise_multiplier"]
    if any("secagg_survivors" in r for r in records):
        summary["secagg_dropped"] = sum(len(r.get("secagg_dropped", [])) for r in records)
    if "uncalibrated_eval_accuracy" in last_eval:
        summary["final_uncalibrated_eval_accuracy"] = last_eval["uncalibrated_eval_accuracy"]
    return summary


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Accuracy (or perplexity) and loss vs round, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    rounds = [r["round"] for r in records]
    for key, ax in (("eval_accuracy", ax1), ("eval_perplexity", ax1)):
        pts = [(r["round"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=key)
    ax1.set_xlabel("round")
    ax1.set_title("held-out metric")
    for key in ("train_loss", "eval_loss"):
        pts = [(r["round"], r[key]) for r in records if key in r]
        if pts:
            ax2.plot(*zip(*pts, strict=True), marker="o", label=key)
    ax2.set_xlabel("round")
    ax2.set_title("loss")
    for ax in (ax1, ax2):
        if ax.lines:
            ax.legend()
    if rounds:
        ax1.set_xlim(0.5, max(rounds) + 0.5)
        ax2.set_xlim(0.5, max(rounds) + 0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}
