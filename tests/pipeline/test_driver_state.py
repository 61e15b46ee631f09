"""What the driver keeps over a job stays bounded: the throughput curve's points, and the heap
pages freed by Ray's native threads go back to the OS (no Ray here)."""

from __future__ import annotations

import platform

import pytest

from pipeline.driver_memory import release_free_memory
from pipeline.throughput import MAX_POINTS, ThroughputCurve


def test_curve_keeps_every_point_of_a_short_job():
    curve = ThroughputCurve()
    for i in range(1, 101):
        curve.add(i * 0.5, i * 8)
    assert curve.samples() == [(0.0, 0)] + [(i * 0.5, i * 8) for i in range(1, 101)]


def test_curve_of_a_long_job_is_bounded_spans_the_job_and_ends_at_its_end():
    curve = ThroughputCurve(max_points=64)
    n = 100_000  # a status batch every 0.1 s for close to three hours
    for i in range(1, n + 1):
        curve.add(i * 0.1, i * 32)
    samples = curve.samples()
    assert len(samples) <= 64 + 1
    assert samples[0] == (0.0, 0)
    assert samples[-1] == pytest.approx((n * 0.1, n * 32))
    times = [t for t, _ in samples]
    assert times == sorted(times)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Evenly thinned: no stretch of the job is left out (the widest gap is a few times the mean).
    assert max(gaps) < 4 * (times[-1] / len(gaps))
    # Every kept point is a real sample: clips done at that time.
    assert all(c == pytest.approx(t * 320) for t, c in samples)


def test_curve_default_bound():
    curve = ThroughputCurve()
    for i in range(1, 50_001):
        curve.add(float(i), i)
    assert len(curve.samples()) <= MAX_POINTS + 1


def test_curve_refuses_a_bound_too_small_to_thin():
    with pytest.raises(ValueError, match="at least 4"):
        ThroughputCurve(max_points=2)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_pages_go_back_to_the_os():
    def rss_kib() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # Blocks below the mmap threshold (so they come from the heap), every other one kept:
    # freeing the rest leaves holes that the heap's top cannot give back on its own.
    size = 64 * 1024
    blocks = [libc.malloc(size) for _ in range(1000)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in blocks[::2]:
        libc.free(b)
    before = rss_kib()
    assert release_free_memory() is True
    after = rss_kib()
    for b in blocks[1::2]:
        libc.free(b)
    assert before - after > 20_000  # KiB: most of the 31 MiB freed came back
