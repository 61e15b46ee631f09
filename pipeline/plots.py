"""The plots attached to a job's MLflow run: throughput over time and the top-1 label histogram.

Drawn on a ``Figure`` with an Agg canvas, not pyplot: no global state or display backend, so
safe from the tracker's threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _new_figure() -> Figure:
    # Imported here: matplotlib costs 0.4 s of CPU to import (measured with -X importtime), and
    # every model actor and driver imports this module through the tracker, but only the
    # driver draws, once, at the end of a job.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_throughput(samples: Sequence[tuple[float, int]], path: Path) -> None:
    fig = _new_figure()
    ax = fig.add_subplot()
    points = sorted((float(t), int(n)) for t, n in samples)
    if points:
        seconds, clips = zip(*points)
        ax.plot(seconds, clips, marker="." if len(points) < 50 else None)
        if seconds[-1] > seconds[0]:
            rate = (clips[-1] - clips[0]) / (seconds[-1] - seconds[0])
            ax.set_title(f"Throughput: {rate:.2f} clips/s")
    else:
        ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("elapsed (s)")
    ax.set_ylabel("clips done")
    ax.grid(True, alpha=0.3)
    fig.savefig(path)


def plot_label_histogram(label_counts: Mapping[str, int], path: Path, top: int = 30) -> None:
    fig = _new_figure()
    ax = fig.add_subplot()
    items = sorted(label_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    if items:
        labels, counts = zip(*reversed(items))  # most frequent on top
        ax.barh(range(len(labels)), counts)
        ax.set_yticks(range(len(labels)), [str(label)[:40] for label in labels], fontsize=7)
        title = (
            "Top-1 labels"
            if len(label_counts) <= top
            else f"Top {top} of {len(label_counts)} labels"
        )
        ax.set_title(title)
    else:
        ax.text(0.5, 0.5, "no labels", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("clips")
    fig.savefig(path)
