"""The benchmark suite must keep running: ``python -m bench --quick`` end to end in a subprocess.

No timing is asserted (performance is a benchmark, not a test); what is checked is that every
suite ran, produced its ratio tables and result files with the machine record, and that the
contenders agreed on what the clips show. Inputs, results and plots go to temporary folders
(``VMB_BENCH_CACHE``, ``VMB_BENCH_RESULTS``), not into the repository (``tests/bench_runs.py``).
"""

from __future__ import annotations

import json

import pytest

from tests import bench_runs


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_quick_runs_every_suite():
    work, out = bench_runs.result("quick")
    for heading in (
        "Decode, every frame",
        "Sparse sampling",
        "Overlap",
        "Peers:",
        "Memory:",
        "Blocks:",
        "frame-average (efficientnet-lite0) on CPU",
        "Scaling on paper",
    ):
        assert heading in out, f"missing table {heading!r}:\n{out[-3000:]}"
    results = work / "results"
    for name in ("decode", "blocks", "overlap", "memory", "peers"):
        doc = json.loads((results / f"quick-{name}.json").read_text())
        assert doc["mode"] == "quick"
        assert doc["machine"]["cores"] >= 1 and doc["machine"]["cpu"]
        assert "bench" in doc["command"] and doc["versions"]["torch"]
    peers = json.loads((results / "quick-peers.json").read_text())["contenders"]
    for name, row in peers.items():
        assert row["clips"] == peers["plain loop"]["clips"] > 0, name
        if "bf16" not in name:  # fp32 on the same pixels with the same weights: same top-1
            assert row["top1_agreement"] == 1.0, name
    decode = json.loads((results / "quick-decode.json").read_text())
    assert all(r["identical_to_sequential"] for r in decode["sparse"])
    blocks = json.loads((results / "quick-blocks.json").read_text())
    import blocks as registry

    assert {r["name"] for r in blocks["models"]} == set(registry.list_blocks())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_archive_quick_prints_its_tables():
    """The archive suite on one 20-video archive, the 1,000-row manifest, the two-node cluster
    and the query layouts (about a minute): its tables come out and its record is complete."""
    work, out = bench_runs.result("archive")
    for heading in (
        "Archive scale:",
        "CPU by process over the 20-video job",
        "first clip, 1 interleaved rounds",
        "Manifest (",
        "Multi-node:",
        "Query (pipeline.query.query)",
    ):
        assert heading in out, f"missing table {heading!r}:\n{out[-3000:]}"
    doc = json.loads((work / "results" / "quick-archive.json").read_text())
    assert doc["machine"]["cpu"] and doc["cpu"] == doc["machine"]["cpu"]
    row = doc["scale"]["20"]
    assert row["videos"] == row["clips"] == 20  # one clip per video, as the bench is built
    assert row["files"]["clips"] >= 1 and row["files"]["videos"] >= 1
    assert row["driver_cpu_s"] > 0
    # The job's processes were sampled: the driver and the two actors used CPU.
    assert {"driver", "DecodeWorker", "ModelWorker"} <= set(row["process_cpu_s"])
    # One more job, stopped at its first clip (which it recorded).
    first = doc["first_clip_rounds"]["times"]["20"]
    assert len(first) == 1 and 0 < first[0] < 600
    assert doc["manifests"]["1000"]["completed"] and doc["manifests"]["1000"]["clips"] == 20
    assert doc["multinode"]["completed"] and len(doc["multinode"]["nodes"]) == 3
    assert all(q["same_answer"] for q in doc["queries"]["queries"].values())
