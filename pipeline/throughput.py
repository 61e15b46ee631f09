"""The job's throughput curve (clips done over elapsed seconds), in a bounded number of points.

The driver adds a point per status batch (a writer task's few dozen clips): at 10M videos that
is hundreds of thousands of points, state that would grow with the archive. The curve keeps at
most ``max_points``: when full, every other point goes and the spacing it keeps doubles, so
the curve covers the whole job evenly at any length.
"""

from __future__ import annotations

MAX_POINTS = 2048


class ThroughputCurve:
    """``(elapsed seconds, clips done)`` samples, thinned to at most ``max_points``."""

    def __init__(self, max_points: int = MAX_POINTS):
        if max_points < 4:
            raise ValueError(f"max_points must be at least 4, got {max_points}")
        self.max_points = max_points
        self.points: list[tuple[float, int]] = [(0.0, 0)]
        self._spacing = 0.0  # seconds a new point must be after the last one kept
        self._last: tuple[float, int] | None = None  # the newest sample, kept or not

    def add(self, seconds: float, clips: int) -> None:
        self._last = (seconds, clips)
        if seconds - self.points[-1][0] < self._spacing:
            return
        self.points.append((seconds, clips))
        if len(self.points) >= self.max_points:
            self.points = self.points[::2]
            self._spacing = 2 * max(self._spacing, seconds / self.max_points)

    def samples(self) -> list[tuple[float, int]]:
        """The kept points and the newest sample (so the curve ends where the job ended)."""
        if self._last is not None and self._last != self.points[-1]:
            return [*self.points, self._last]
        return list(self.points)
