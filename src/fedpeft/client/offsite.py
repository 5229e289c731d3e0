"""The Offsite-Tuning client application: train on the emulator (or, in a tiered job, on
the full backbone), evaluate plug-in too.

:class:`OffsiteClientApp` is a :class:`~fedpeft.client.app.LoraClientApp` whose model is
the emulator with the sandwich adapter (``build_adapted_model`` builds it for
``adapter.kind = "offsite"``): training, the update mods, the codecs and the per-client
state are LoRA's, unchanged, because the adapter's tensors carry the full model's names.

**Tiers.** In a tiered job (``federation.full_model_fraction > 0``) the clients the model
owner trusts with the backbone (``full_model``; a simulation's factory passes
:func:`fedpeft.client.factory.job_tiers`) train the same
adapter on the full backbone, the rest on the emulator. Both send the same tensors (same
names, shapes and initial values), so the coordinator aggregates one cohort. Every
training result says which tier produced it: ``tier_full`` and ``tier_emulator`` in its
metrics, 1 for its tier and 0 for the other (plain rounds; under secure aggregation a
result carries no metrics in the clear). The tier is the owner's own decision, not a
fact of the client's data.

Evaluation reports both numbers of the paper: ``eval_*`` for the **plug-in** model (the
adapter in the full backbone — the product) and ``emulator_*`` for the adapter on the
emulator. In a deployment the coordinator, which owns the backbone, evaluates plug-in; in
simulation the evaluating worker stands in for it. The full backbone is loaded lazily:
by the evaluating worker on its first evaluation, and by a worker on its first full-tier
task; a worker that only trains emulator-tier clients never loads it.
"""

from __future__ import annotations

import contextlib
import enum
import functools
from collections.abc import Iterator
from typing import Any

from fedpeft.adapters import load_trainable_state
from fedpeft.adapters.offsite import build_plugin_model, check_backbone, job_emulator
from fedpeft.client.app import LoraClientApp
from fedpeft.client.mods import UpdateMod
from fedpeft.config import JobConfig
from fedpeft.models.registry import resolve_model_path
from fedpeft.protocol.messages import Tensors, TrainResult, TrainTask
from fedpeft.training.generate import Generation
from fedpeft.training.loop import evaluate
from fedpeft.training.setup import AdaptedModel


class Tier(enum.Enum):
    """What an Offsite-Tuning client trains the sandwich adapter on."""

    FULL = "full"  # the whole backbone: a client the model owner trusts with it
    EMULATOR = "emulator"  # the emulator: everyone else

    @property
    def metric(self) -> str:
        """The result metric that counts this tier (``tier_full``, ``tier_emulator``)."""
        return f"tier_{self.value}"


class OffsiteClientApp(LoraClientApp):
    """An Offsite-Tuning client: one emulator in memory (and the full backbone once a
    full-tier client or an evaluation needs it), any number of virtual clients."""

    def __init__(
        self,
        cfg: JobConfig,
        *,
        mods: list[UpdateMod] | None = None,
        name: str = "worker",
        full_model: frozenset[int] = frozenset(),
        tier: Tier | None = None,
    ) -> None:
        """``full_model``: the client ids that train on the full backbone, the others on
        the emulator; ``tier``: every client this app serves trains on that tier instead
        (a daemon declares its own)."""
        if not cfg.adapter.on_emulator:
            raise ValueError(
                f"OffsiteClientApp needs adapter.kind = offsite, not {cfg.adapter.kind}"
            )
        super().__init__(cfg, mods=mods, name=name)
        self._plugin: AdaptedModel | None = None
        self._tier = tier
        self._full_clients = frozenset(full_model)

    def plugin(self) -> AdaptedModel:
        """The full backbone with the same adapter, loaded on first use."""
        if self._plugin is None:
            self._plugin = build_plugin_model(self.cfg, self.adapted.task, self.adapted.label_names)
        return self._plugin

    def tier(self, client_id: int) -> Tier:
        """The tier client ``client_id`` trains on."""
        if self._tier is not None:
            return self._tier
        return Tier.FULL if client_id in self._full_clients else Tier.EMULATOR

    @contextlib.contextmanager
    def _trained_model(self, tier: Tier) -> Iterator[None]:
        """``self.model`` is the full backbone for a full-tier task, then the emulator again.

        LoRA's task path (downlink, local loop, mods, codec, feature statistics) reads
        ``self.model``; the two models share the adapter's names, shapes and tokenizer."""
        emulator = self.model
        if tier is Tier.FULL:
            self.model = self.plugin().model
        try:
            yield
        finally:
            self.model = emulator

    def train(self, task: TrainTask) -> TrainResult:
        if task.kind.startswith("secagg_"):  # key and share stages: no model involved
            return super().train(task)
        tier = self.tier(task.client_id)
        with self._trained_model(tier):
            result = super().train(task)
        # under secure aggregation a result carries no metrics in the clear
        # (fedpeft.client.update.UpdateSender): the tier is not sent either
        if result.ok and task.kind == "train" and not task.secagg:
            result.metrics.update({t.metric: float(t is tier) for t in Tier})
        return result

    def evaluate_part(self, params: Tensors, part: int, parts: int) -> None:
        """Not split: plug-in evaluation needs the full backbone, which only the
        evaluating worker loads (the backend then evaluates on one worker)."""
        return None

    def evaluate(self, params: Tensors) -> dict[str, float]:
        emulator = super().evaluate(params)  # the adapter on the emulator
        if not emulator or self._eval_data is None:
            return {}
        plugin = self.plugin().model
        load_trainable_state(plugin, params)  # same names, shapes checked
        generation = Generation.from_config(self.cfg, self.adapted.tokenizer)  # ROUGE-L
        metrics: dict[str, float] = evaluate(
            plugin, self._eval_data, self.cfg.train.eval_batch_size, generation=generation
        )
        metrics.update({f"emulator_{k.removeprefix('eval_')}": v for k, v in emulator.items()})
        return metrics


def _make_offsite_app(cfg: JobConfig, full_model: frozenset[int], name: str) -> OffsiteClientApp:
    return OffsiteClientApp(cfg, name=name, full_model=full_model)


def offsite_app_factory(cfg: JobConfig, full_model: frozenset[int] = frozenset()) -> Any:
    """The app factory of an Offsite-Tuning job (``full_model``: the clients that train on
    the full backbone), after checking (in the caller's process, before any worker starts)
    that the emulator was built from the job's backbone."""
    info = job_emulator(cfg)
    check_backbone(
        info, resolve_model_path(cfg.model.name, cfg.model.cache_dir), "adapter.emulator"
    )
    return functools.partial(_make_offsite_app, cfg, frozenset(full_model))
