"""The driver's running totals: every failure counted, only the first ``FAILURES_KEPT`` kept."""

from __future__ import annotations

from pipeline.job import FAILURES_KEPT, _Totals


def _shard_counts(index: int, failed: int) -> dict:
    """What a shard commit reports: ``failed`` missing videos and one ok video."""
    failures = [
        {
            "video_id": f"{index}-{i}",
            "video_uri": f"s3://bucket/{index}/{i}.mp4",
            "status": "error",
            "error_type": "SourceRead",
            "error_message": "no such object " + "x" * 500,
        }
        for i in range(failed)
    ]
    return {
        "videos_processed": failed + 1,
        "clips_new": 3,
        "decode_s": 0.5,
        "infer_s": 0.25,
        "statuses": {"error": failed, "ok": 1},
        "labels": {"tabby": 3},
        "failures": failures,
        "marker": {"node_id": "node-a"},
    }


def test_failures_are_counted_in_full_and_kept_up_to_the_cap():
    totals = _Totals()
    shards = 3 * FAILURES_KEPT // 400 + 1  # well past the cap
    for index in range(shards):
        totals.add(_shard_counts(index, 400))

    assert totals.videos_failed == 400 * shards
    assert totals.failures_by_type == {"SourceRead": 400 * shards}
    assert len(totals.failures) == FAILURES_KEPT  # the driver's memory stays bounded
    assert [f["video_id"] for f in totals.failures[:2]] == ["0-0", "0-1"]  # the first ones
    assert totals.videos_processed == 401 * shards and totals.clips == 3 * shards
    assert totals.shards_committed == shards and totals.commit_nodes == {"node-a": shards}
