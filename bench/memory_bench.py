"""4. Memory: peak RSS of the driver + every Ray process, and object-store use, for 20 and 200
videos.

``run_job`` runs in this process on a fresh local Ray instance per archive (so idle workers of
an earlier run are not counted). A sampler thread adds up, every 0.2 s, the resident set size
of this process and all of its descendants (GCS, raylet, workers: psutil, shipped with Ray) and
reads the object store's used bytes (``ray._private.internal_api.memory_summary``, 1 Hz).
RSS double-counts pages shared between processes (the object store's shared memory, Python
libraries), the same way for both archives.

Figures: peak(200 videos) / peak(20 videos) of RSS and of object-store use; target <= 1.2 each
(memory must not grow with the archive: the pipeline streams, and each job caps the decoded
clips it may hold in the object store, see ``pipeline.resources.stream_memory_limit``). The quick
archives (3 and 12 clips) are smaller than that cap, so their object-store ratio only shows
the archive size.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
from pathlib import Path

from bench import inputs
from bench.common import Settings, log, psutil, save


class Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.psutil = psutil()
        self.peak_rss = 0
        self.peak_driver = 0
        self.peak_store = 0
        self.peak_procs = 0
        self._halt = threading.Event()

    def run(self) -> None:
        me = self.psutil.Process(os.getpid())
        last_store = 0.0
        while not self._halt.is_set():
            procs = [me, *me.children(recursive=True)]
            total = 0
            for p in procs:
                with contextlib.suppress(self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                    total += p.memory_info().rss
            self.peak_rss = max(self.peak_rss, total)
            self.peak_driver = max(self.peak_driver, me.memory_info().rss)
            self.peak_procs = max(self.peak_procs, len(procs))
            if time.time() - last_store > 1.0:
                self.peak_store = max(self.peak_store, object_store_bytes())
                last_store = time.time()
            self._halt.wait(0.2)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def object_store_bytes() -> int:
    import ray

    try:
        from ray._private.internal_api import memory_summary

        # This instance's GCS explicitly: without it Ray picks "the latest cluster" on the
        # machine, someone else's on a shared box.
        text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    except Exception as err:  # noqa: BLE001 -- a private API: a missing reading must not fail the run
        log(f"memory: object store reading failed: {type(err).__name__}: {err}")
        return 0
    m = re.search(r"Plasma memory usage (\d+) MiB", text)
    return int(m.group(1)) * 1024 * 1024 if m else 0


def measure(archive: Path, tmp: Path) -> dict:
    import ray

    from bench.overlap_bench import job_spec
    from pipeline.job import run_job

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    sampler = Sampler()
    sampler.start()
    try:
        t0 = time.perf_counter()
        result = run_job(
            job_spec(
                archive,
                tmp / archive.name,
                {"num_cpus": 1.0, "options": {"channels_last": True}},
                {},
            )
        )
        wall = time.perf_counter() - t0
    finally:
        sampler.stop()
        ray.shutdown()
    return {
        "videos": result.summary["videos"],
        "clips": result.summary["clips"],
        "wall_s": wall,
        "peak_rss_bytes": sampler.peak_rss,
        "peak_driver_rss_bytes": sampler.peak_driver,
        "peak_object_store_bytes": sampler.peak_store,
        "peak_processes": sampler.peak_procs,
    }


def run(settings: Settings) -> dict:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    small, large = (3, 12) if settings.quick else (20, 200)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="vmb-memory-") as tmp:
        for count in (small, large):
            log(f"memory: {count} videos")
            rows[count] = measure(inputs.many_short_archive(count), Path(tmp))
            rows[count]["load"] = round(os.getloadavg()[0], 2)
    growth = rows[large]["peak_rss_bytes"] / rows[small]["peak_rss_bytes"]
    store_growth = (
        rows[large]["peak_object_store_bytes"] / rows[small]["peak_object_store_bytes"]
        if rows[small]["peak_object_store_bytes"]
        else float("nan")
    )
    payload = {
        "small": small,
        "large": large,
        "runs": rows,
        "rss_growth": growth,
        "object_store_growth": store_growth,
    }
    save("memory", settings, payload)
    return payload
