"""When a federated run has failed as a whole, say so: an exception, not exit code 0.

A round whose clients all raised leaves the global adapter unchanged and is logged with
``round_failed``; the engine goes on, because one bad round (a transient error, a cohort
of empty shards) should not end a job. A run in which *every* round failed produced
nothing, and must not look like a success: :func:`check_run` raises :class:`RunFailed`
with the clients' error on one line (the CLI prints it and exits 2; ``--debug`` shows the
traceback). :func:`watch` (the simulation's) stops the run after its first round already
when every client of every round so far raised the very same error — a deterministic
failure (a bad column, a programming error) that more rounds would only repeat.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from fedpeft.coordinator.engine import EngineHooks
from fedpeft.errors import FedPeftError

__all__ = ["RunFailed", "check_run", "watch"]


class RunFailed(FedPeftError):
    """Every round of a run failed; the message carries the clients' error."""


_CLIENT_ID = re.compile(r"\bclient \d+\b")


def _one_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "(no message)"


def _reasons(records: Sequence[dict[str, Any]]) -> list[str]:
    """Every rejected client's error, one line each, with client ids masked so that the
    same error from different clients compares equal."""
    return [
        _CLIENT_ID.sub("client <id>", _one_line(str(reason)))
        for rec in records
        for reason in rec.get("rejected", {}).values()
    ]


def failure_message(records: Sequence[dict[str, Any]]) -> str | None:
    """Why the run failed as a whole, or None when some round aggregated an update."""
    rounds = [r for r in records if "round" in r]
    if not rounds or any("round_failed" not in r for r in rounds):
        return None
    reasons = _reasons(rounds)
    sampled = sum(int(r.get("clients_sampled", 0)) for r in rounds)
    head = f"all {len(rounds)} round(s) failed"
    if not reasons:
        return f"{head}: {_one_line(str(rounds[-1]['round_failed']))}"
    (reason, count), *others = Counter(reasons).most_common()
    if not others and count == sampled:
        return f"{head}: every client raised {reason}"
    return f"{head}; most common client error ({count} of {len(reasons)}): {reason}"


def check_run(records: Sequence[dict[str, Any]]) -> None:
    """Raise :class:`RunFailed` when every round of ``records`` failed."""
    message = failure_message(records)
    if message is not None:
        raise RunFailed(message)


def watch(hooks: EngineHooks | None) -> EngineHooks:
    """``hooks`` plus a stop after any round when every client so far raised one error."""
    inner = hooks or EngineHooks()
    seen: list[dict[str, Any]] = []

    def on_round_end(record: dict[str, Any]) -> None:
        if inner.on_round_end is not None:
            inner.on_round_end(record)
        seen.append(record)
        message = failure_message(seen)
        reasons = set(_reasons(seen))
        sampled = sum(int(r.get("clients_sampled", 0)) for r in seen)
        if message is not None and len(reasons) == 1 and len(_reasons(seen)) == sampled:
            raise RunFailed(message)

    return dataclasses.replace(inner, on_round_end=on_round_end)
