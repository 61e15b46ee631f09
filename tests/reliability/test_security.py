"""Security: credentials in URIs and in ``storage_options`` never reach logs, MLflow, ``_job.json``
or the tables; a checkpoint carrying code is refused; archive member names never become paths;
bad specs fail with one clear error before any Ray work and write nothing."""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import cli
from pipeline import job as job_module
from pipeline.job import run_job
from pipeline.query import query
from tests.pipeline.jobs_util import read_table, tiny_spec
from tests.ports import free_port
from tests.videos import make_tar, make_video, make_zip

REPO = Path(__file__).resolve().parents[2]
HTTP_USER, HTTP_PASSWORD = "alice", "pw-SECRET-0001"
SIGNATURE, CREDENTIAL = "SIGSECRET0001", "AKIACREDSECRET0001"
STORAGE_SECRETS = {
    "key": "AKIAEXAMPLEKEY0001",
    "secret": "storage-SECRET-0001",
    "token": "session-TOKEN-0001",
}


def _assert_clean(text: str, secrets: tuple[str, ...], where: str) -> None:
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"{leaked} leaked into {where}"


def _mlflow_text(tracking_uri: str, run_id: str, tmp: Path) -> str:
    """Params, tags and every artifact of the run, as one text."""
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    local = Path(client.download_artifacts(run_id, "", str(tmp)))
    files = sorted(p for p in local.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"summary.json", "failed_videos.csv"}
    return json.dumps([run.data.params, run.data.tags]) + "".join(
        p.read_bytes().decode("latin-1") for p in files
    )


def _tables_text(output: str, storage_options=None) -> str:
    rows = [
        query(output, f"select * from {name}", storage_options).to_pylist()
        for name in ("clips", "videos")
    ]
    return json.dumps(rows, default=str)


# -- credentials in URIs and archive member names ------------------------------------------


class _AuthFiles(SimpleHTTPRequestHandler):
    """Serves a folder to HTTP basic-auth user alice only (the query string is ignored)."""

    def do_HEAD(self):  # noqa: N802 - http.server's naming
        if self._authorised():
            super().do_HEAD()

    def do_GET(self):  # noqa: N802
        if self._authorised():
            super().do_GET()

    def _authorised(self) -> bool:
        token = base64.b64encode(f"{HTTP_USER}:{HTTP_PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") == f"Basic {token}":
            return True
        self.send_error(401)
        return False

    def log_message(self, *args):
        pass


@pytest.fixture
def http_files(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_AuthFiles, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_uri_credentials_and_unsafe_member_names(ray_session, tmp_path, http_files, caplog):
    """One job over a manifest of signed URLs with user:password@ (one missing) and of tar/zip
    shards whose member names try to escape: no secret in logs, MLflow, _job.json or tables;
    no file written outside the output; unsafe members get their own error rows."""
    served, base = http_files
    make_video(served / "v0.mp4", num_frames=24, seed=1)
    creds = f"{HTTP_USER}:{HTTP_PASSWORD}@"
    query_string = f"?X-Amz-Signature={SIGNATURE}&X-Amz-Credential={CREDENTIAL}"
    signed = base.replace("http://", "http://" + creds)
    abs_target = Path(f"/tmp/vmb-abs-{uuid.uuid4().hex}.mp4")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    video = make_video(inputs / "ok.mp4", num_frames=24, seed=2)
    make_tar(
        inputs / "evil.tar",
        {
            "../escape-tar.mp4": video,
            "../../escape-tar2.mp4": video,
            str(abs_target): video,
            "fine/inner.mp4": video,
        },
    )
    make_zip(
        inputs / "evil.zip",
        {"../escape-zip.mp4": video, "a/../../escape-zip2.mp4": video, "inner.mp4": video},
    )
    manifest = inputs / "manifest.txt"
    manifest.write_text(
        f"{signed}/v0.mp4{query_string}\n{signed}/gone.mp4{query_string}\nevil.tar\nevil.zip\n"
    )
    out = tmp_path / "job" / "out"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="pipeline")

    result = run_job(
        tiny_spec(str(manifest), str(out), mlflow={"enabled": True, "tracking_uri": tracking})
    )

    rows = read_table(str(out), "videos").to_pylist()
    names = {
        (
            v["video_uri"].split("#", 1)[1]
            if "#" in v["video_uri"]
            else v["video_uri"].rsplit("/", 1)[-1]
        ): v
        for v in rows
    }
    assert len(rows) == len(names) == 9, [(v["video_uri"], v["error_type"]) for v in rows]
    ok = sorted(k for k, v in names.items() if v["status"] == "ok")
    assert ok == ["fine/inner.mp4", "inner.mp4", "v0.mp4?X-Amz-Signature=***&X-Amz-Credential=***"]
    unsafe = sorted(k for k, v in names.items() if v["error_type"] == "UnsafeMemberName")
    assert unsafe == sorted(
        [
            "../escape-tar.mp4",
            "../../escape-tar2.mp4",
            str(abs_target),
            "../escape-zip.mp4",
            "a/../../escape-zip2.mp4",
        ]
    ), unsafe
    assert names["gone.mp4?X-Amz-Signature=***&X-Amz-Credential=***"]["error_type"] == "SourceRead"

    secrets = (HTTP_PASSWORD, SIGNATURE, CREDENTIAL)
    _assert_clean(caplog.text, secrets, "the job's log")
    _assert_clean((out / "_job.json").read_text(), secrets, "_job.json")
    _assert_clean(_tables_text(str(out)), secrets, "the tables")
    _assert_clean(_mlflow_text(tracking, result.run_id, tmp_path / "artifacts"), secrets, "MLflow")
    # Member names never became paths: the output holds the tables only, nothing escaped.
    assert not abs_target.exists()
    written = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
    assert written and all(
        p.parts[0] in ("clips", "videos", "_shards") or p.name == "_job.json" for p in written
    ), written
    escaped = [p for p in tmp_path.rglob("*escape*")] + list(Path("/tmp").glob("escape-*"))
    assert escaped == [], escaped


def test_storage_option_secrets_stay_out_of_everything(ray_session, s3_server, tmp_path, caplog):
    """key/secret/token in storage_options (S3 in and out): none in logs, MLflow, _job.json or
    the tables."""
    opts = {**s3_server.storage_options, **STORAGE_SECRETS}
    bucket = s3_server.make_bucket("vmb-rel-secrets")
    import s3fs

    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    fs.put_file(make_video(tmp_path / "a.mp4", num_frames=24), f"{bucket[5:]}/in/a.mp4")
    output = f"{bucket}/out"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="pipeline")

    result = run_job(
        tiny_spec(
            f"{bucket}/in/",
            output,
            storage_options=opts,
            mlflow={"enabled": True, "tracking_uri": tracking},
        ),
        spec_text=json.dumps({"storage_options": opts}),
    )

    assert result.summary["videos_ok"] == 1
    secrets = tuple(STORAGE_SECRETS.values())
    _assert_clean(caplog.text, secrets, "the job's log")
    _assert_clean(fs.cat_file(f"{bucket[5:]}/out/_job.json").decode(), secrets, "_job.json")
    _assert_clean(_tables_text(output, opts), secrets, "the tables")
    _assert_clean(_mlflow_text(tracking, result.run_id, tmp_path / "artifacts"), secrets, "MLflow")
    assert (
        json.loads(fs.cat_file(f"{bucket[5:]}/out/_job.json"))["spec"]["storage_options"]["secret"]
        == "***"
    )


def _vmb(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_never_prints_credentials_of_a_failing_job(s3_server, tmp_path):
    """``vmb -v run`` on an S3 URI with key:secret@ in it: one clear error, no secret on
    stdout or stderr, nothing written."""
    bucket = s3_server.make_bucket("vmb-rel-cli")
    out = tmp_path / "out"
    spec = tmp_path / "job.toml"
    spec.write_text(f"""
input = "s3://AKIAEXAMPLE:supersecret@{bucket[5:]}/videos/"
output = "{out}"
[storage_options]
key = "{STORAGE_SECRETS["key"]}"
secret = "{STORAGE_SECRETS["secret"]}"
client_kwargs = {{ endpoint_url = "{s3_server.endpoint_url}", region_name = "us-east-1" }}
[mlflow]
enabled = false
[[models]]
name = "frame-average"
""")
    proc = _vmb(["-v", "run", str(spec), "--no-progress"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("vmb run: error: ") and "Traceback" not in proc.stderr
    _assert_clean(
        proc.stdout + proc.stderr, ("supersecret", *STORAGE_SECRETS.values()), "the CLI's output"
    )
    assert not out.exists()


# -- checkpoints carrying code ---------------------------------------------------------------


class _Payload:
    """Unpickling this runs ``Path(marker).touch()``: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _undo_cli_globals(monkeypatch) -> None:
    """``cli.main`` sets an environment variable and the ``ray`` logger's level: restore both."""
    monkeypatch.delenv("RAY_DATA_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr(logging.getLogger("ray"), "level", logging.getLogger("ray").level)


def _no_ray(*args, **kwargs):
    raise AssertionError("Ray was started before the spec was fully validated")


def test_checkpoint_with_code_is_refused_before_ray(tmp_path, monkeypatch):
    marker = tmp_path / "code-ran"
    weights = tmp_path / "evil.pth"
    weights.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    archive = tmp_path / "in"
    archive.mkdir()
    make_video(archive / "a.mp4", num_frames=24)
    out = tmp_path / "out"
    spec = tmp_path / "job.toml"
    spec.write_text(f"""
input = "{archive}"
output = "{out}"
[mlflow]
enabled = false
[[models]]
name = "efficientnet-lite0"
weights = "{weights}"
""")
    monkeypatch.setattr(job_module, "_init_ray", _no_ray)
    from blocks.registry import UnsafeCheckpointError
    from pipeline.spec import load_spec

    with pytest.raises(UnsafeCheckpointError, match="refusing"):
        run_job(load_spec(spec)[0])
    proc = _vmb(["run", str(spec), "--no-progress"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "refusing" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    assert not out.exists()


# -- bad specs: one clear error before any Ray work, nothing written --------------------------


BAD_SPECS = {
    "unknown key": ('input = "{archive}"\noutput = "{out}"\ncolour = "blue"\n', "unknown key"),
    "unknown nested key": (
        'input = "{archive}"\noutput = "{out}"\n[sampling]\nclip_length = 8\n',
        "sampling.clip_length: unknown key",
    ),
    "wrong type": (
        'input = "{archive}"\noutput = "{out}"\n[sampling]\nclip_len = "eight"\n',
        "sampling.clip_len",
    ),
    "no models": ('input = "{archive}"\noutput = "{out}"\nmodels = []\n', "models"),
    "model needs weights": (
        'input = "{archive}"\noutput = "{out}"\n[[models]]\nname = "ifnet-v4"\ntask = "motion"\n',
        "needs weights",
    ),
    "missing input": ('input = "{archive}/nothing-here"\noutput = "{out}"\n', "does not exist"),
    "unreachable http input": (
        'input = "http://127.0.0.1:{port}/a.mp4"\noutput = "{out}"\n',
        "input",
    ),
    "unreachable s3 input": (
        'input = "s3://bucket/videos/"\noutput = "{out}"\n[storage_options]\nkey = "k"\n'
        'secret = "s"\nconfig_kwargs = {{ retries = {{ max_attempts = 1 }} }}\n'
        'client_kwargs = {{ endpoint_url = "http://127.0.0.1:{port}" }}\n',
        "cannot list input",
    ),
    "output is a file": ('input = "{archive}"\noutput = "{file}"\n', "not writable"),
    "output under a file": ('input = "{archive}"\noutput = "{file}/out"\n', "not writable"),
    "output under a read-only folder": (
        'input = "{archive}"\noutput = "/proc/vmb-out/{port}"\n',
        "not writable",
    ),
}
_DEFAULT_MODEL = '\n[mlflow]\nenabled = false\n[[models]]\nname = "frame-average"\n'


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-spec-archive")
    make_video(root / "a.mp4", num_frames=24)
    return root


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_is_one_clear_error_before_ray(case, small_archive, tmp_path, monkeypatch, capsys):
    template, expected = BAD_SPECS[case]
    out = tmp_path / "out"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    text = template.format(archive=small_archive, out=out, file=blocker, port=free_port())
    if "[[models]]" not in text and "models =" not in text:  # sections after the defaults
        head, sep, tail = text.partition("\n[")
        text = head + _DEFAULT_MODEL + sep + tail
    spec = tmp_path / "job.toml"
    spec.write_text(text)
    monkeypatch.setattr(job_module, "_init_ray", _no_ray)
    _undo_cli_globals(monkeypatch)

    code = cli.main(["run", str(spec), "--no-progress"])

    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("vmb run: error: ") and expected in err, err
    assert "Traceback" not in err and "AssertionError" not in err
    assert not out.exists() and blocker.read_text() == "not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "job.toml"]


def test_missing_weights_file_is_one_clear_error_before_ray(
    small_archive, tmp_path, monkeypatch, capsys
):
    spec = tmp_path / "job.toml"
    spec.write_text(
        f'input = "{small_archive}"\noutput = "{tmp_path / "out"}"\n[mlflow]\n'
        f'enabled = false\n[[models]]\nname = "efficientnet-lite0"\n'
        f'weights = "{tmp_path / "missing.pth"}"\n'
    )
    monkeypatch.setattr(job_module, "_init_ray", _no_ray)
    _undo_cli_globals(monkeypatch)
    code = cli.main(["run", str(spec), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "missing.pth" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
