"""``run_simulation``: a whole federated job on the in-process or Ray backend.

The job itself (engine settings, privacy, run folder, summary) is
:class:`fedpeft.coordinator.job.Job`, as in a deployment; a simulation brings the virtual
clients' shards, a seeded sampler, a backend of long-lived workers, and the clients' own
state store (:mod:`fedpeft.simulation.client_store`, ``<run>/clients``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fedpeft.client.factory import app_factory as client_app_factory
from fedpeft.config import JobConfig
from fedpeft.coordinator import failures
from fedpeft.coordinator.engine import Backend, EngineHooks, checkpoint_exists
from fedpeft.coordinator.job import Job
from fedpeft.coordinator.sampling import ClientSampler
from fedpeft.data import describe, partition
from fedpeft.errors import ConfigError
from fedpeft.models import resolve_model_path
from fedpeft.protocol.messages import AppFactory
from fedpeft.rundir import RunDir
from fedpeft.simulation.client_store import CLIENTS_DIR, stateful_factory
from fedpeft.training.setup import load_job_data, partition_groups


def make_shards(cfg: JobConfig) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Split the training set over the virtual clients (seeded)."""
    data = load_job_data(cfg)
    fed = cfg.federation
    # what the partition deals out: nothing (iid), class labels, or k-means clusters
    labels = partition_groups(cfg, data.train)
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


def make_backend(cfg: JobConfig, factory: AppFactory) -> Backend:
    """The configured backend, its workers started (each builds its app with ``factory``)."""
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


def run_simulation(
    cfg: JobConfig,
    *,
    resume: bool = False,
    hooks: EngineHooks | None = None,
    app_factory: AppFactory | None = None,
    export: bool = True,
    force: bool = False,
    on_plan: Callable[[str], None] | None = None,
    wrap_collection: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the job; writes the run folder and returns the summary. An output
    folder holding another run is refused unless ``force`` (which replaces that run once
    the job has been checked)."""
    started = time.perf_counter()
    shards, meta = make_shards(cfg)
    fed = cfg.federation
    if fed.calibration != "none" and meta["task"] != "classification":
        raise ConfigError(
            "federation.calibration",
            f"{fed.calibration!r} calibrates a classifier; this job is {meta['task']}",
        )
    run_meta = meta
    if resume:
        run = RunDir(cfg.output)
        if not checkpoint_exists(run.path):
            raise ConfigError("--resume", f"{run.path} has no checkpoint to resume from")
        run_meta = {**run.meta(), **{k: meta[k] for k in ("task", "label_names")}}
    # before any worker loads a model: a DP target no noise can meet is refused here
    job = Job(
        cfg,
        run_meta,
        resume=resume,
        population=fed.clients,
        shard_sizes=[len(s) for s in shards],
        started=started,
        force=force,
    )
    if wrap_collection is not None:  # e.g. fedpeft audit keeping what the coordinator holds
        job.protection["collection"] = wrap_collection(job.protection["collection"])
    # each virtual client's own state (its error-feedback residual, the adapter it holds)
    # stays beside the backend, in <run>/clients, as it would on a device
    factory = stateful_factory(
        app_factory or client_app_factory(cfg), job.run_dir.path / CLIENTS_DIR
    )
    backend = make_backend(cfg, factory)
    if cfg.secagg.enabled and cfg.secagg.dropout_rate > 0:
        from fedpeft.simulation.dropout import DropoutBackend

        backend = DropoutBackend(
            backend, cfg.secagg.dropout_rate, cfg.secagg.dropout_stage, cfg.train.seed
        )
    return job.run(
        backend,
        ClientSampler(fed.clients, fed.clients_per_round, fed.sampling, cfg.train.seed),
        shards,
        failures.watch(hooks),  # stops a run whose clients all raise one error
        export=export,
        on_plan=on_plan,  # a DP run's noise against its clip, before round 1
        # evaluation is on the first data.max_eval_examples held-out examples: say how many
        extra={
            "eval_examples": meta["eval_examples"],
            "max_eval_examples": cfg.data.max_eval_examples,
        },
    )
