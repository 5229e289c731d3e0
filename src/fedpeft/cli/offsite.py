"""``fedpeft offsite``: Offsite-Tuning tools for the model owner (``build-emulator``)."""

from __future__ import annotations

from pathlib import Path

import typer

from fedpeft.cli.common import console

offsite_app = typer.Typer(
    help="Offsite-Tuning: build the emulator that clients train the sandwich adapter on.",
    no_args_is_help=True,
)


@offsite_app.command("build-emulator")
def build_emulator(
    out: Path = typer.Option(..., "--out", help="emulator folder to write"),
    model: str = typer.Option(
        "minilm", "--model", help="backbone: minilm, smollm2-135m, a local HF folder or hub id"
    ),
    adapter_blocks: int = typer.Option(
        2, "--adapter-blocks", help="a: the first a and last a blocks form the trainable adapter"
    ),
    keep_middle: int | None = typer.Option(
        None, "--keep-middle", help="middle blocks the emulator keeps (evenly spaced)"
    ),
    keep_ratio: float | None = typer.Option(
        None, "--keep-ratio", help="or: fraction of the middle kept (default 0.5)"
    ),
    distill_steps: int = typer.Option(
        0, "--distill-steps", help="distil the kept middle on public text for N steps (0 = off)"
    ),
    distill_data: str = typer.Option(
        "reuters-r8", "--distill-data", help="public text: built-in name or local file"
    ),
    distill_lr: float = typer.Option(1e-4, "--distill-lr", help="distillation learning rate"),
    distill_batch_size: int = typer.Option(16, "--distill-batch-size", help="texts per step"),
    distill_max_length: int = typer.Option(64, "--distill-max-length", help="tokens per text"),
    seed: int = typer.Option(0, "--seed", help="distillation data order"),
) -> None:
    """Write an emulator: embeddings, adapter blocks and the kept middle blocks only."""
    from fedpeft.adapters.offsite import DistillSettings, build_emulator, emulator_weight_bytes

    distill = DistillSettings(
        steps=distill_steps,
        data=distill_data,
        lr=distill_lr,
        batch_size=distill_batch_size,
        max_length=distill_max_length,
        seed=seed,
    )
    info = build_emulator(
        model,
        out,
        adapter_blocks=adapter_blocks,
        keep_middle=keep_middle,
        keep_ratio=keep_ratio,
        distill=distill,
    )
    layout = info.layout
    console.print(
        f"emulator of `{model}` written to {out}: blocks {list(layout.emulator_blocks)} of "
        f"{layout.num_layers} (adapter {list(layout.adapter_indices)}, kept middle "
        f"{list(layout.kept_middle)}, dropped {list(layout.dropped)}), "
        f"{emulator_weight_bytes(out) / 2**20:.1f} MiB of weights"
    )
    if info.distillation:
        d = info.distillation
        console.print(
            f"distilled {d['steps']} steps on {d['data']}: hidden-state NMSE "
            f"{d['nmse_before']:.4f} -> {d['nmse_after']:.4f}"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(offsite_app, name="offsite")
