"""The Offsite-Tuning client application: train on the emulator, evaluate plug-in too.

:class:`OffsiteClientApp` is a :class:`~fedpeft.client.app.LoraClientApp` whose model is
the emulator with the sandwich adapter (``build_adapted_model`` builds it for
``adapter.kind = "offsite"``): training, the update mods, the codecs and the per-client
state are LoRA's, unchanged, because the adapter's tensors carry the full model's names.

Evaluation reports both numbers of the paper: ``eval_*`` for the **plug-in** model (the
adapter in the full backbone — the product) and ``emulator_*`` for the adapter on the
emulator. In a deployment the coordinator, which owns the backbone, evaluates plug-in; in
simulation the evaluating worker stands in for it and is the only one that loads the full
backbone (lazily, on the first evaluation). Training clients never do.
"""

from __future__ import annotations

import functools
from typing import Any

from fedpeft.adapters import load_trainable_state
from fedpeft.adapters.offsite import build_plugin_model, check_backbone, job_emulator
from fedpeft.client.app import LoraClientApp
from fedpeft.client.mods import UpdateMod
from fedpeft.config import JobConfig
from fedpeft.models.registry import resolve_model_path
from fedpeft.protocol.messages import Tensors
from fedpeft.training.loop import evaluate
from fedpeft.training.setup import AdaptedModel


class OffsiteClientApp(LoraClientApp):
    """An Offsite-Tuning client: one emulator in memory, any number of virtual clients."""

    def __init__(
        self, cfg: JobConfig, *, mods: list[UpdateMod] | None = None, name: str = "worker"
    ) -> None:
        if not cfg.adapter.on_emulator:
            raise ValueError(
                f"OffsiteClientApp needs adapter.kind = offsite, not {cfg.adapter.kind}"
            )
        super().__init__(cfg, mods=mods, name=name)
        self._plugin: AdaptedModel | None = None

    def plugin(self) -> AdaptedModel:
        """The full backbone with the same adapter, loaded on first use."""
        if self._plugin is None:
            self._plugin = build_plugin_model(self.cfg, self.adapted.task, self.adapted.label_names)
        return self._plugin

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
        metrics: dict[str, float] = evaluate(
            plugin, self._eval_data, self.cfg.train.eval_batch_size
        )
        metrics.update({f"emulator_{k.removeprefix('eval_')}": v for k, v in emulator.items()})
        return metrics


def _make_offsite_app(cfg: JobConfig, name: str) -> OffsiteClientApp:
    return OffsiteClientApp(cfg, name=name)


def offsite_app_factory(cfg: JobConfig) -> Any:
    """The app factory of an Offsite-Tuning job, after checking (in the caller's process,
    before any worker starts) that the emulator was built from the job's backbone."""
    info = job_emulator(cfg)
    check_backbone(
        info, resolve_model_path(cfg.model.name, cfg.model.cache_dir), "adapter.emulator"
    )
    return functools.partial(_make_offsite_app, cfg)
