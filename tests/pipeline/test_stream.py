"""The stream's block sizes: the listing reaches the probe stage in small blocks, whatever Ray
Data's byte target for blocks is (one model batch of decoded clips: thousands of listing rows)."""

from __future__ import annotations

from pathlib import Path

from pipeline.listing_source import ShardListingDatasource
from pipeline.stream import split_blocks


def _listing(folder: Path, output: Path):
    import ray.data as rd

    ds = rd.read_datasource(
        ShardListingDatasource(
            input_uri=str(folder),
            storage_options={},
            shard_size=1000,
            markers={},
            output=str(output),
            run="blocks",
        ),
        num_cpus=0.1,
        override_num_blocks=1,
    )
    ds.context.target_max_block_size = 64 * 1024 * 1024
    return ds


def _block_rows(ds) -> list[int]:
    return [b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow")]


def test_listing_reaches_the_probe_in_blocks_of_listing_block_rows(ray_session, tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    videos = 101
    for i in range(videos):
        (folder / f"v{i:04d}.mp4").write_bytes(b"\0" * 16)  # listed by name and size only

    # Unsplit, Ray Data merges every listing row into one block: one probe task for all.
    assert _block_rows(_listing(folder, tmp_path / "a")) == [videos]

    split = split_blocks(_listing(folder, tmp_path / "b"), 32, num_cpus=0.1)
    # Blocks reach the consumer in the order their tasks finish: compare the sizes, not the order.
    assert sorted(_block_rows(split), reverse=True) == [32, 32, 32, 5]
    # ... with the fraction of a CPU asked for, not Ray Data's default of one, and no cap on the
    # blocks a split task yields ahead of the executor (so it ends, and frees its worker).
    assert split._logical_plan.dag.ray_remote_args == {
        "num_cpus": 0.1,
        "_generator_backpressure_num_objects": -1,
    }
