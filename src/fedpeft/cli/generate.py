"""``fedpeft generate``: try what a run produced — the backbone plus the run's adapter
complete prompts (greedy), loaded as any PEFT user would load them."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fedpeft.cli.common import console
from fedpeft.errors import ConfigError

PANEL = "Generation"


def generate(
    source: Path = typer.Argument(
        ..., metavar="RUN_OR_ADAPTER", help="a run folder, or an adapter folder it exported"
    ),
    prompt: list[str] = typer.Option(
        [], "--prompt", help="an instruction to complete (repeatable)", rich_help_panel=PANEL
    ),
    prompts: Path | None = typer.Option(
        None,
        "--prompts",
        help="a file of instructions: one per line, or a JSON/JSONL list of "
        "{instruction, input} records",
        rich_help_panel=PANEL,
    ),
    max_new_tokens: int = typer.Option(
        128, "--max-new-tokens", help="most tokens generated per prompt", rich_help_panel=PANEL
    ),
    raw: bool = typer.Option(
        False,
        "--raw",
        help="send the prompt as given (default: inside the Alpaca template the job trained on)",
        rich_help_panel=PANEL,
    ),
    device: str = typer.Option(
        "cpu", "--device", help="cpu, cuda or cuda:N", rich_help_panel=PANEL
    ),
) -> None:
    """Complete instructions with the backbone and a run's LoRA adapter (greedy)."""
    from fedpeft.data import format_alpaca_prompt
    from fedpeft.training.generate import generate_texts, load_for_generation

    if max_new_tokens <= 0:
        raise ConfigError("--max-new-tokens", f"must be a positive integer, got {max_new_tokens}")
    items = [(p, "") for p in prompt] + (_read_prompts(prompts) if prompts else [])
    if not items:
        raise ConfigError("--prompt", "give at least one --prompt or a --prompts file")
    model, tokenizer, folder = load_for_generation(source, device)
    texts = [p if raw else format_alpaca_prompt(p, extra or None) for p, extra in items]
    outputs = generate_texts(model, tokenizer, texts, max_new_tokens=max_new_tokens)
    if len(items) == 1:
        typer.echo(outputs[0])
        return
    console.print(f"[dim]adapter: {folder}[/dim]")
    for (p, _), out in zip(items, outputs, strict=True):
        typer.echo(f"### {p}\n{out}\n")


def _read_prompts(path: Path) -> list[tuple[str, str]]:
    """``(instruction, input)`` pairs of a prompts file (see ``--prompts``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--prompts", f"cannot read {path}: {exc.strerror or exc}") from exc
    if path.suffix.lower() in (".json", ".jsonl"):
        try:
            records = (
                json.loads(text)
                if text.lstrip().startswith("[")
                else [json.loads(line) for line in text.splitlines() if line.strip()]
            )
        except json.JSONDecodeError as exc:
            raise ConfigError("--prompts", f"{path}: invalid JSON ({exc.msg})") from exc
        out = []
        for i, rec in enumerate(records):
            if not isinstance(rec, dict) or not str(rec.get("instruction", "")).strip():
                raise ConfigError("--prompts", f"{path}: record {i} has no `instruction`")
            out.append((str(rec["instruction"]), str(rec.get("input") or "")))
        return out
    lines = [(line.strip(), "") for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError("--prompts", f"{path} holds no prompt")
    return lines


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
