"""Fixtures shared by the whole test-suite. Keep this file small and general: fixtures that
only one area needs belong in that area's test files.

Video helpers live in ``tests/videos.py`` (import them as ``from tests.videos import ...``).
"""

from __future__ import annotations

import os

import pytest

from tests.ports import own_dashboard_agent_port
from tests.videos import make_video

# Ray reads RAY_DEDUP_LOGS once, when it is imported -- which test modules do at collection,
# before any fixture runs -- so it is set here, at conftest import, as well as in the fixture.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Fault injection for the reliability tests: decoding a video whose URI contains this marker
# hangs in native code holding the GIL (see pipeline/child_process.py). Set before Ray starts
# so every worker inherits it.
os.environ.setdefault("VMB_FAULT_HANG_MARKER", "__vmb_hang__")


def pytest_sessionfinish(session):
    from tests import bench_runs

    bench_runs.stop()


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory):
    """Keep tests from writing outside their temporary folders, for the whole session.

    - ``MLFLOW_TRACKING_URI``: a sqlite store in a session temp dir; with no URI, MLflow 3
      writes ``mlflow.db`` into the current directory (the repository).
    - ``VMB_CACHE_DIR``: converted model graphs go to a session temp dir, not ``~/.cache/vmb``.
    - ``RAY_DEDUP_LOGS=0``: Ray prints every worker's log line instead of collapsing repeats,
      so a failing test's output shows what each worker said.

    Yields the MLflow tracking URI. Previous values are restored at the end of the session.
    """
    mlflow_dir = tmp_path_factory.mktemp("mlflow")
    tracking_uri = f"sqlite:///{mlflow_dir / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        mp.setenv("RAY_DEDUP_LOGS", "0")
        mp.setenv("VMB_CACHE_DIR", str(tmp_path_factory.mktemp("vmb-cache")))
        yield tracking_uri


@pytest.fixture(scope="session")
def ray_session(isolated_env):
    """One embedded Ray instance for the whole session (starting Ray takes seconds).

    2 CPUs like the target machines (so stage CPU requests that would deadlock there deadlock
    here too), no dashboard, worker logs not streamed to the test's output, a 300 MB object
    store, and no runtime_env. ``address="local"`` starts a fresh instance even if
    ``RAY_ADDRESS`` names a cluster. Depends on ``isolated_env`` so the workers inherit its
    environment. Yields the ``ray`` module.

    ``_node_ip_address="127.0.0.1"`` asks for loopback, but Ray 2.60 does not honour it:
    ``services.resolve_ip_for_localhost`` swaps it for the node's routable address, and the
    GCS, raylet and worker gRPC servers listen on all interfaces (checked with ``ss -ltnp``).
    """
    import ray

    with own_dashboard_agent_port():  # leaves Ray's fixed agent port to the instances tests start
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            object_store_memory=300 * 1024 * 1024,
        )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_video(tmp_path_factory) -> str:
    """Path of one H.264 MP4: 24 frames of the ``"moving"`` pattern, 64x48, 12 fps (2 s).

    Session-scoped and shared: do not modify or delete it.
    """
    return make_video(tmp_path_factory.mktemp("tiny_video") / "tiny.mp4")


# What `tiny_archive` holds, for tests that check listings and probes against it.
TINY_ARCHIVE = {
    "a_64x48_24f.mp4": {"num_frames": 24, "size": (64, 48), "fps": 12.0, "codec": "libx264"},
    "b_96x64_36f.mp4": {"num_frames": 36, "size": (96, 64), "fps": 24.0, "codec": "libx264"},
    "c_80x60_10f.mkv": {"num_frames": 10, "size": (80, 60), "fps": 10.0, "codec": "ffv1"},
}


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory) -> str:
    """Folder with three short videos of different sizes, lengths, rates and codecs (see
    ``TINY_ARCHIVE``) plus ``notes.txt``, a non-video file a lister must skip or report.

    Session-scoped and shared: do not modify it; copy it first.
    """
    root = tmp_path_factory.mktemp("tiny_archive")
    for seed, (name, spec) in enumerate(TINY_ARCHIVE.items()):
        make_video(root / name, seed=seed, **spec)
    (root / "notes.txt").write_text("not a video\n")
    return str(root)
