"""The audit's picture: each metric beside its chance reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_report(report: dict[str, Any], path: Path) -> None:
    """One bar pair (attack, chance) per row of ``report["rows"]``, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.8 * len(rows) + 1), 3.6))
    xs = range(len(rows))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], [r["value"] for r in rows], width, label="attack")
    ax.bar(
        [x + width / 2 for x in xs],
        [r["chance"] if r["chance"] is not None else 0.0 for r in rows],
        width,
        label="chance (best guess common to a cohort)",
        color="0.7",
    )
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{r['attack']}\n{r['metric']}" for r in rows], fontsize=7)
    ax.set_title(f"fedpeft audit — {report['setting']} ({report['view']})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
