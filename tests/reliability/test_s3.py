"""Jobs on object storage lose nothing and duplicate nothing: the archive (plain objects and a
tar shard) and the tables on S3 -- a real moto server on loopback, reached by the driver and the
Ray workers alike -- and an S3 outage in the middle of a job (503 SlowDown answers, or the server
gone and back on the same port), which the job rides out by retrying."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from pipeline.job import run_job
from pipeline.query import query
from tests.pipeline.jobs_util import tiny_spec
from tests.ports import free_port
from tests.videos import make_tar, make_video

FRAMES, CLIPS_PER_VIDEO = 24, 3  # tiny sampling: 4 frames every 2nd, non-overlapping
LONG_FRAMES, LONG_CLIPS = 60, 8
_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def _upload(storage_options: dict[str, Any], local: Path, uri: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**storage_options, skip_instance_cache=True)
    fs.put_file(str(local), uri.removeprefix("s3://"))


def _make_archive(
    tmp: Path,
    bucket: str,
    storage_options: dict[str, Any],
    n_plain: int,
    n_tar: int,
    frames: int = FRAMES,
) -> str:
    """``n_plain`` videos as objects and ``n_tar`` more in ``shard.tar``, under one prefix."""
    for i in range(n_plain):
        video = Path(make_video(tmp / f"v{i:02d}.mp4", num_frames=frames, seed=i))
        _upload(storage_options, video, f"{bucket}/archive/{video.name}")
    members = {
        f"t{i:02d}.mp4": make_video(tmp / f"t{i:02d}.mp4", num_frames=frames, seed=50 + i)
        for i in range(n_tar)
    }
    if members:
        _upload(
            storage_options,
            Path(make_tar(tmp / "shard.tar", members)),
            f"{bucket}/archive/shard.tar",
        )
    return f"{bucket}/archive/"


def _assert_complete(
    output: str,
    storage_options: dict[str, Any],
    n_videos: int,
    clips_per_video: int = CLIPS_PER_VIDEO,
) -> None:
    """Exactly one clips row per (video_id, clip_index, model) and every video ok, read back
    from S3 through the query layer."""
    repeated = query(
        output,
        "select video_id, clip_index, model, count(*) as n from clips group by all having n <> 1",
        storage_options,
    )
    assert repeated.num_rows == 0, f"repeated clip rows: {repeated.to_pylist()}"
    clips = query(
        output,
        "select count(*) as n, count(distinct video_id) as videos from clips",
        storage_options,
    ).to_pylist()[0]
    assert clips == {"n": n_videos * clips_per_video, "videos": n_videos}
    videos = query(
        output, "select status, error_type, error_message, video_uri from videos", storage_options
    ).to_pylist()
    assert len(videos) == n_videos
    assert [v for v in videos if v["status"] != "ok"] == []


def test_job_reads_archive_and_writes_tables_on_s3(ray_session, s3_server, tmp_path):
    """Plain objects and tar members listed and read from S3, tables published to S3."""
    opts = s3_server.storage_options
    bucket = s3_server.make_bucket("vmb-rel-s3")
    archive = _make_archive(tmp_path, bucket, opts, n_plain=2, n_tar=2)
    output = f"{bucket}/out"

    result = run_job(tiny_spec(archive, output, storage_options=opts))

    assert result.summary["videos_ok"] == 4 and result.summary["clips"] == 4 * CLIPS_PER_VIDEO
    _assert_complete(output, opts, 4)
    uris = query(output, "select video_uri from videos order by 1", opts).column(0).to_pylist()
    assert [u.rsplit("/", 1)[-1] for u in uris] == [
        "shard.tar#t00.mp4",
        "shard.tar#t01.mp4",
        "v00.mp4",
        "v01.mp4",
    ]
    # Publishing is atomic on S3 by single PUTs: no temporary or probe objects are left behind.
    import s3fs

    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    names = {p.rsplit("/", 1)[-1] for p in fs.find(output.removeprefix("s3://"))}
    assert names and all(
        n == "_job.json"
        or n.endswith(".parquet")
        or (n.startswith("shard-") and n.endswith(".json"))
        for n in names
    ), names
    # A second run of the same job finds everything published and adds nothing.
    again = run_job(tiny_spec(archive, output, storage_options=opts))
    assert again.summary["resumed_videos_skipped"] == 4 and again.summary["clips"] == 0
    _assert_complete(output, opts, 4)


class FlakyS3:
    """A moto S3 server on loopback that can fail on demand.

    ``mode`` is ``"up"``; ``"5xx"`` answers every request with ``503 SlowDown``; :meth:`go_down`
    closes the listening socket (new connections are refused) and drops requests arriving on
    kept-alive connections without an answer, until :meth:`come_back` listens again on the same
    port. moto's backends are process-global, so buckets and objects survive.
    """

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.storage_options = {
            "key": "testing-key",
            "secret": "testing-secret",
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
        }
        self.mode = "up"
        self.failed_requests = 0
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server = None
        self._thread: threading.Thread | None = None

    def _app(self, environ, start_response):
        if self.mode == "5xx":
            self.failed_requests += 1
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if length:
                environ["wsgi.input"].read(length)  # leave the kept-alive connection clean
            body = b"" if environ["REQUEST_METHOD"] == "HEAD" else _SLOWDOWN
            start_response(
                "503 Slow Down",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return self._moto(environ, start_response)

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler

        flaky = self

        class Handler(MotoRequestHandler):
            def parse_request(self) -> bool:
                if not super().parse_request():
                    return False
                if flaky.mode == "down":  # a request on a connection kept alive from before
                    flaky.failed_requests += 1
                    self.close_connection = True
                    return False  # no answer: the client sees the connection closed
                return True

        self._server = make_server(
            "127.0.0.1", self.port, self._app, threaded=True, request_handler=Handler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(10)
            self._server = None

    def go_down(self) -> None:
        self.mode = "down"
        self.stop()

    def come_back(self) -> None:
        self.start()
        self.mode = "up"


@pytest.fixture
def flaky_s3():
    server = FlakyS3()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _make_bucket(server: FlakyS3, name: str) -> str:
    import boto3

    boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing-key",
        aws_secret_access_key="testing-secret",
    ).create_bucket(Bucket=name)
    return f"s3://{name}"


def _outage_when_clips_appear(
    server: FlakyS3, bucket: str, kind: str, seconds: float, done: threading.Event, log: list[str]
) -> None:
    """Once the job's writers have published their first part file, fail S3 for ``seconds``.

    A ``5xx`` outage then goes on until some request of the job has been refused.
    """
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing-key",
        aws_secret_access_key="testing-secret",
    )
    deadline = time.monotonic() + 240
    while not done.is_set() and time.monotonic() < deadline:
        listed = client.list_objects_v2(Bucket=bucket.removeprefix("s3://"), Prefix="out/_staging/")
        if listed.get("KeyCount", 0):
            break
        time.sleep(0.1)
    if done.is_set():
        log.append("job ended before the outage")
        return
    log.append("down")
    if kind == "5xx":
        server.mode = "5xx"
        time.sleep(seconds)
        # The job may not touch S3 within those seconds (its decode is done, its next part not
        # yet written): the outage lasts until it has answered at least one request with 503.
        while not server.failed_requests and not done.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        server.mode = "up"
    else:
        server.go_down()
        time.sleep(seconds)
        server.come_back()
    log.append("back" if not done.is_set() else "job ended during the outage")


@pytest.mark.parametrize("kind", ["5xx", "down"])
def test_s3_outage_mid_job_is_retried_and_tables_are_complete(
    ray_session, flaky_s3, tmp_path, kind
):
    # botocore's retries off (they alone outlast a 2 s outage): the job's own must carry it.
    opts = {
        **flaky_s3.storage_options,
        "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}},
    }
    bucket = _make_bucket(flaky_s3, f"vmb-rel-outage-{kind}")
    n_videos = 4
    archive = _make_archive(tmp_path, bucket, opts, n_plain=3, n_tar=1, frames=LONG_FRAMES)
    output = f"{bucket}/out"
    done = threading.Event()
    events: list[str] = []
    chaos = threading.Thread(
        target=_outage_when_clips_appear,
        args=(flaky_s3, bucket, kind, 2.0, done, events),
        daemon=True,
    )
    chaos.start()
    try:
        result = run_job(
            tiny_spec(
                archive,
                output,
                storage_options=opts,
                models=[{"name": "frame-average", "batch_size": 2}],
                shard_size=2,
            )
        )
    finally:
        done.set()
        chaos.join(30)
    assert events[:2] == ["down", "back"], f"the outage did not hit the running job: {events}"
    if kind == "5xx":
        assert flaky_s3.failed_requests > 0, "no request was answered with 503"
    assert result.summary["videos_ok"] == n_videos, result.failed
    _assert_complete(output, opts, n_videos, LONG_CLIPS)
