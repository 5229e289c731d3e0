"""One federated job, assembled and run the same way by ``simulate`` and ``coordinator serve``.

What the job's config decides lives here: the :class:`~fedpeft.coordinator.engine.RoundEngine`
settings (:func:`engine_settings`), the SecAgg+ and DP objects (:func:`privacy_settings`),
and the run's lifecycle (:class:`Job`): create or reopen the run folder, start or resume
the engine, run the rounds, refuse a run whose every round failed, then write the final
adapter, the curves, the exported adapter and ``summary.json``. The two entry points
(``fedpeft.simulation.run_simulation``, :func:`~fedpeft.coordinator.server.serve_job`)
bring only what carries the rounds: backend, sampler, shards, the run's meta and their
transport.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedpeft.aggregation import make_strategy
from fedpeft.config import JobConfig
from fedpeft.coordinator.engine import Backend, EngineHooks, RoundEngine, Sampler
from fedpeft.coordinator.failures import check_run
from fedpeft.coordinator.schedule import RoundConfig
from fedpeft.data import check_job_labels
from fedpeft.errors import ConfigError
from fedpeft.protocol.codecs import downlink_codec, uplink_codec
from fedpeft.protocol.messages import TaskSettings, Tensors
from fedpeft.rundir import RunDir, new_run_id, strict_json

log = logging.getLogger(__name__)


def engine_settings(cfg: JobConfig) -> dict[str, Any]:
    """The RoundEngine arguments a job's config decides (strategy, codecs, rounds, seeds,
    client schedule); the entry points add their backend, sampler, shards and run folder."""
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
            TaskSettings(proximal_mu=fed.proximal_mu, logit_adjustment=fed.logit_adjustment),
            lr=cfg.train.lr,
            rounds=fed.rounds,
            schedule=fed.client_lr_schedule,
            final=fed.client_lr_final,
            warmup=fed.client_lr_warmup_rounds,
        ),
    }


def check_secagg_plan(cfg: JobConfig) -> None:
    """Refuse, before any round, a cohort too small to hide one client (fewer than
    ``MIN_COHORT`` = 3: with two, each learns the other's update from the sum), and a
    cohort size and tolerated dropout for which SecAgg+ has no threshold and neighbour
    graph that completes (Flower's SecAgg+ halts silently)."""
    from fedpeft.privacy.secagg import MIN_COHORT, plan_secagg

    k = cfg.federation.clients_per_round
    if k < MIN_COHORT:
        raise ConfigError(
            "federation.clients_per_round",
            f"secure aggregation needs at least {MIN_COHORT} clients per round, got {k}: "
            "with two, each client learns the other's update from the released sum",
        )
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
    cfg: JobConfig,
    run_path: Path,
    *,
    population: int,
    shard_sizes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The RoundEngine's ``collection`` (SecAgg+, or None: plain) and ``privacy`` (a DP
    mechanism, or None) of a job, checked against each other before any backbone loads.

    ``population`` is the DP accountant's: the clients a round's cohort is drawn from (a
    cohort smaller than its population buys sampling amplification). ``shard_sizes``
    (simulation) sets the automatic weight cap: the largest client."""
    from fedpeft.coordinator.secure import SecureRound, auto_bits

    out: dict[str, Any] = {"collection": None, "privacy": None}
    sa = cfg.secagg
    if sa.enabled:
        check_secagg_plan(cfg)
        compressed = cfg.codec.compresses
        weight_cap = sa.weight_cap or max(shard_sizes or [1000])
        out["collection"] = SecureRound(
            tolerated_dropout=sa.tolerated_dropout,
            bits=sa.bits or auto_bits(compressed, cfg.federation.clients_per_round),
            clip_range=sa.clip_range,
            weight_cap=max(1, weight_cap),
            density=cfg.codec.density if compressed else 1.0,
            seed=cfg.train.seed,
        )
    if cfg.dp.enabled:
        from fedpeft.coordinator.dp import make_dp_controller
        from fedpeft.coordinator.privacy import CentralDp, DistributedDp

        distributed = cfg.dp.mode == "distributed" or (cfg.dp.mode == "auto" and sa.enabled)
        mechanism = DistributedDp if distributed else CentralDp
        mechanism.check_collection(sa.enabled)
        if not distributed and make_strategy(cfg.federation).needs_individual_updates:
            raise ConfigError(
                "federation.strategy",
                f"{cfg.federation.strategy} needs each client's update; central DP gives the "
                "strategy only the noised mean (use fedavg with DP)",
            )
        controller = make_dp_controller(
            cfg, run_path, distributed=distributed, population=population
        )
        out["privacy"] = mechanism(controller, rounds=cfg.federation.rounds)
    return out


class Job:
    """One run of a federated job in its run folder, from opening it to the summary.

    The constructor creates the run folder (or reopens it to resume) and builds what the
    config decides, refusing a privacy plan that cannot work before any backbone loads;
    :meth:`run` takes what carries the rounds and returns the summary."""

    def __init__(
        self,
        cfg: JobConfig,
        meta: Mapping[str, Any],
        *,
        resume: bool,
        population: int,
        shard_sizes: Sequence[int] | None = None,
        started: float | None = None,
        force: bool = False,
    ) -> None:
        self.started = time.perf_counter() if started is None else started
        self.resume = resume
        self.run_dir = RunDir(cfg.output)
        check_job_labels(meta.get("label_names"), "data.train", cfg.data.train)
        # a run's folder is its own: resuming continues the run held there (ids agree);
        # a fresh run (a new id, or the caller's: a deployment's state database) refuses
        # a folder holding another run unless ``force``, which removes that run's files
        run_id = meta.get("run_id")
        if resume:
            self.run_dir.check_own(run_id)
            run_id = run_id or self.run_dir.run_id() or new_run_id()
        else:
            run_id = run_id or new_run_id()
            self.run_dir.claim(run_id, force=force)
        self.previous = self.run_dir.summary() if resume else {}
        self.run_dir.create(cfg, {**meta, "run_id": run_id})
        if not resume:
            self.run_dir.rewrite_metrics([])
        self.settings = engine_settings(cfg)
        # the most examples one client may report: federation.max_client_examples, else the
        # SecAgg weight cap, else (simulation) the largest shard
        bounds = self.settings["strategy"].bounds
        if bounds is not None:
            cap = cfg.secagg.weight_cap if cfg.secagg.enabled else 0
            self.settings["max_client_examples"] = (
                bounds.max_examples or cap or (bounds.examples_cap(shard_sizes))
            )
        self.protection = privacy_settings(
            cfg, self.run_dir.path, population=population, shard_sizes=shard_sizes
        )
        self.rounds = cfg.federation.rounds

    def run(
        self,
        backend: Backend,
        sampler: Sampler,
        shards: Sequence[np.ndarray | None],
        hooks: EngineHooks,
        *,
        export: bool = True,
        extra: Mapping[str, Any] | None = None,
        on_resume: Callable[[int], None] | None = None,
        on_plan: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Run the remaining rounds; write the outputs and the summary (plus ``extra``).
        ``on_resume`` hears the round a resumed run continues after; ``on_plan`` a DP
        run's plan (its noise against the clip), before the first round."""
        privacy = self.protection["privacy"]
        try:
            engine = RoundEngine(
                backend=backend,
                sampler=sampler,
                shards=shards,
                run=self.run_dir,
                hooks=hooks,
                **self.settings,
                **self.protection,
            )
            initial = self._start(engine, on_resume)
            controller = getattr(privacy, "controller", None)  # DP mechanisms have one
            if controller is not None:
                dim = sum(int(np.prod(shape)) for shape in engine.shapes.values())
                line = controller.plan_line(dim, self.rounds)
                log.info("%s", line)
                if on_plan is not None:
                    on_plan(line)
            engine.run()
            check_run(self.run_dir.read_metrics())  # every round failed: an error, not exit 0
            final = engine.output_params
        except BaseException:
            backend.shutdown()
            raise
        finally:
            if privacy is not None:
                privacy.close()
        # Stopping the backend (Ray: killing workers, stopping its daemons) is a second or
        # two of mostly waiting; the outputs are written meanwhile.
        with _in_background(backend.shutdown, "fedpeft-backend-shutdown"):
            records = self._write_outputs(final, export)
        summary = summarize(records, initial, time.perf_counter() - self.started, self.previous)
        summary.update(extra or {})
        if engine.stopped is not None:
            summary["stopped"] = engine.stopped
        self.run_dir.write_summary(strict_json(summary))  # never a bare NaN
        return summary

    def _start(
        self, engine: RoundEngine, on_resume: Callable[[int], None] | None
    ) -> dict[str, Any]:
        """Round 0's metrics: measured now, or kept from the run being resumed."""
        if self.resume:
            engine.resume()
            log.info("resuming after round %d", engine.state.round)
            if on_resume is not None:
                on_resume(engine.state.round)
            return {k: v for k, v in self.previous.items() if k.startswith("initial_")}
        initial = {f"initial_{k}": v for k, v in engine.start_fresh().items()}
        # kept beside the checkpoint so a resumed run still reports round 0
        self.run_dir.write_summary(strict_json(initial))
        return initial

    def _write_outputs(self, final: Tensors, export: bool) -> list[dict[str, Any]]:
        """The final adapter (state, and the PEFT folder with ``export``) and the curves;
        returns the run's metrics."""
        import torch

        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in final.items()}
        self.run_dir.save_state(state)
        records = self.run_dir.read_metrics()
        plot_curves(records, self.run_dir.path / "curves.png")
        if export:
            from fedpeft.export import export_adapter

            export_adapter(self.run_dir.path, self.run_dir.path / "adapter")
        return records


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
    """The run's summary from its metrics lines; ``previous`` is the summary of the run
    this one resumed (its wall time adds up)."""
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
    # a non-finite evaluation is null in the line and flagged; the summary says so too
    flagged = [f"final_{k}" for k in last_eval.get("nonfinite", []) if k.startswith("eval_")]
    if flagged:
        summary["nonfinite"] = flagged
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
        for key in ("dp_cohort_sampling", "dp_amplification"):  # what the ε assumed
            if key in with_eps[-1]:
                summary[key] = with_eps[-1][key]
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
