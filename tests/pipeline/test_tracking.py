"""JobTracker against a real `mlflow server`, and the models:/ registry round trip."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from pipeline import tracking
from pipeline.model_registry import ModelResolutionError, register_weights, resolve_model_uri
from pipeline.tracking import (
    MAX_PARAM_VALUE_CHARS,
    JobTracker,
    TrackingUnavailableError,
    default_tracking_uri,
    runtime_tags,
)

SPEC_TEXT = """\
input = "s3://AKIA:secret@bucket/x"
output = "s3://bucket/out"

[storage_options]
key = "AKIAEXAMPLEKEYID"
secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYSECRETVALUE"

[[models]]
name = "efficientnet_lite0"
batch_size = 8
"""

SPEC = {
    "input": "s3://AKIA:secret@bucket/x",
    "output": "s3://bucket/out",
    "storage_options": {
        "key": "AKIAEXAMPLEKEYID",
        "secret": "wJalrXUtnFEMIK7MDENGbPxRfiCYSECRETVALUE",
    },
    "models": [{"name": "efficientnet_lite0", "batch_size": 8, "options": {"note": "x" * 7000}}],
    "sampling": {"clip_len": 8, "size": [224, 224]},
}
SECRETS = (
    "AKIA:secret",
    "AKIAEXAMPLEKEYID",
    "wJalrXUtnFEMIK7MDENGbPxRfiCYSECRETVALUE",
    "sig-SECRET",
)


def _run_job(uri: str, experiment: str, tags: dict[str, str] | None = None) -> JobTracker:
    tracker = JobTracker(uri, experiment, "job-1", fail_fast=True)
    run_id = tracker.start(SPEC, tags={**runtime_tags(), **(tags or {})})
    assert run_id is not None and tracker.active
    for step, done in enumerate([4, 10, 16]):
        tracker.log_metrics({"clips_done": done, "clips_per_s": done / (step + 1)}, step=step)
    tracker.log_artifacts(
        SPEC_TEXT,
        summary={"videos": 3, "clips": 16, "output": SPEC["input"]},
        failed_videos=[
            {
                "video_id": "v2",
                "video_uri": "https://host/b.mp4?X-Amz-Signature=sig-SECRET",
                "status": "error",
                "error_type": "DecodeError",
                "error_message": "bad header",
            }
        ],
        throughput=[(0.0, 0), (1.0, 4), (2.5, 10), (3.0, 16)],
        label_counts={"walking": 10, "running": 5, "swimming": 1},
    )
    tracker.end("FINISHED")
    return tracker


@pytest.fixture(scope="module")
def logged_run(mlflow_server) -> JobTracker:
    """One job's run, logged through JobTracker with credentials in the spec, tags and artifacts."""
    return _run_job(
        mlflow_server.uri,
        "round-trip",
        tags={"vmb.input": "s3://AKIA:secret@bucket/x", "api_token": "sig-SECRET"},
    )


def test_job_run_round_trip(mlflow_server, logged_run: JobTracker, tmp_path: Path) -> None:
    tracker = logged_run
    assert tracker.failed is None and not tracker.active
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(tracker.run_id)

    assert run.info.status == "FINISHED"
    assert run.info.run_name == "job-1"
    assert run.data.params["models.0.name"] == "efficientnet_lite0"
    assert run.data.params["models.0.batch_size"] == "8"
    assert run.data.params["sampling.clip_len"] == "8"
    assert run.data.params["sampling.size"] == "[224, 224]"
    assert len(run.data.params["models.0.options.note"]) == MAX_PARAM_VALUE_CHARS
    assert run.data.tags["vmb.version.mlflow"] and "vmb.hostname" in run.data.tags
    history = client.get_metric_history(tracker.run_id, "clips_done")
    assert [(m.step, m.value) for m in history] == [(0, 4.0), (1, 10.0), (2, 16.0)]

    names = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert names == {
        "spec.toml",
        "summary.json",
        "failed_videos.csv",
        "throughput.png",
        "label_histogram.png",
    }
    local = Path(client.download_artifacts(tracker.run_id, "", str(tmp_path)))
    assert json.loads((local / "summary.json").read_text())["clips"] == 16
    rows = list(csv.DictReader(io.StringIO((local / "failed_videos.csv").read_text())))
    assert [(r["video_id"], r["error_type"]) for r in rows] == [("v2", "DecodeError")]
    for png in ("throughput.png", "label_histogram.png"):
        assert (local / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'name = "efficientnet_lite0"' in (local / "spec.toml").read_text()


def test_credentials_never_reach_mlflow(
    mlflow_server, logged_run: JobTracker, tmp_path: Path
) -> None:
    tracker = logged_run
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(tracker.run_id)
    logged = json.dumps([run.data.params, run.data.tags])
    local = Path(client.download_artifacts(tracker.run_id, "", str(tmp_path)))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert len(files) == 5

    for secret in SECRETS:
        assert secret not in logged, secret
        for path in files:
            assert secret.encode() not in path.read_bytes(), (secret, path.name)
    assert run.data.params["input"] == "s3://***@bucket/x"
    assert run.data.params["storage_options.secret"] == "***"
    assert run.data.tags["api_token"] == "***"


def test_unreachable_server_degrades_to_no_ops(
    unused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = JobTracker(f"http://127.0.0.1:{unused_port}", "down", "job", fail_fast=False)
    assert tracker.start(SPEC, tags={}) is None
    assert tracker.failed is not None and "unavailable" in tracker.failed
    assert "unavailable" in caplog.text
    # The job goes on: none of these may raise or reach a server.
    tracker.log_metrics({"clips_done": 1.0}, step=0)
    tracker.log_artifacts(SPEC_TEXT, {}, [], [], {})
    tracker.end("FINISHED")
    assert tracker.run_id is None and not tracker.active


def test_unreachable_server_fails_fast(unused_port: int) -> None:
    tracker = JobTracker(f"http://127.0.0.1:{unused_port}", "down", "job", fail_fast=True)
    with pytest.raises(TrackingUnavailableError, match="127.0.0.1"):
        tracker.start(SPEC, tags={})


def test_error_mid_job_is_recorded_not_raised(mlflow_server) -> None:
    tracker = JobTracker(mlflow_server.uri, "mid-job", "job", fail_fast=True)
    run_id = tracker.start({"a": 1}, tags={})
    tracker.log_metrics({"ok": 1.0, "odd key?": 2.0, "undefined": None}, step=0)
    assert tracker.failed is None
    client = MlflowClient(mlflow_server.uri)
    client.delete_run(run_id)  # someone deletes the run while the job runs
    tracker.log_metrics({"ok": 3.0}, step=1)
    assert tracker.failed is not None and tracker.failed.startswith("log_metrics failed")
    tracker.log_artifacts(SPEC_TEXT, {}, [], [], {})  # now a no-op
    tracker.end("FINISHED")  # best effort, logged not raised

    client.restore_run(run_id)
    run = client.get_run(run_id)
    assert run.data.metrics == {"ok": 1.0, "odd key_": 2.0}
    assert not client.list_artifacts(run_id)


def test_calls_out_of_order_are_programming_errors(mlflow_server) -> None:
    tracker = JobTracker(mlflow_server.uri, "order", "job")
    with pytest.raises(RuntimeError, match="started"):
        tracker.log_metrics({"x": 1.0})
    tracker.start({}, tags={})
    with pytest.raises(RuntimeError, match="already started"):
        tracker.start({}, tags={})
    tracker.end("KILLED")
    tracker.end("FINISHED")  # idempotent: the first status stays
    assert MlflowClient(mlflow_server.uri).get_run(tracker.run_id).info.status == "KILLED"


def test_default_store_is_under_cwd_dot_vmb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/.vmb/mlflow.db"

    tracker = JobTracker(None, "local", "job")
    run_id = tracker.start({"a": 1}, tags={})
    tracker.log_artifacts("a = 1\n", {}, [], [], {})
    tracker.end()

    assert (tmp_path / ".vmb" / "mlflow.db").is_file()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    run = MlflowClient(tracker.tracking_uri).get_run(run_id)
    assert run.data.params == {"a": "1"}
    assert run.info.artifact_uri.startswith((tmp_path / ".vmb").resolve().as_uri())


def test_runtime_tags_describe_the_ray_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}, {"Alive": False}])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 6.0, "GPU": 1.0, "memory": 1e9})
    tags = runtime_tags()
    assert (tags["vmb.ray.nodes"], tags["vmb.ray.cpus"], tags["vmb.ray.gpus"]) == ("2", "6", "1")
    assert tags["vmb.version.torch"] == torch.__version__
    assert {
        "vmb.version.ray",
        "vmb.version.decord",
        "vmb.version.vmb",
        "vmb.hostname",
    } <= tags.keys()


def test_spec_text_that_cannot_be_redacted_line_by_line_falls_back_to_json(tmp_path: Path) -> None:
    text = 'tokens = ["sig-SECRET", "other"]\nname = "x"\n'
    with pytest.raises(ValueError, match="survived|not TOML"):
        tracking.redact_toml_text(text)
    tracking._write_spec(tmp_path, text)
    assert not (tmp_path / "spec.toml").exists()
    assert json.loads((tmp_path / "spec.json").read_text()) == {"tokens": "***", "name": "x"}


def test_flatten_params_keys_and_values() -> None:
    flat = tracking.flatten_params(
        {
            "a": {"b": {"c": 1}},
            "m": [{"n": "x"}, {"n": "y"}],
            "empty": {},
            "none": None,
            "odd key!": True,
        }
    )
    assert flat == {
        "a.b.c": "1",
        "m.0.n": "x",
        "m.1.n": "y",
        "empty": "{}",
        "none": "None",
        "odd key_": "True",
    }


@pytest.fixture(scope="module")
def registered(mlflow_server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    state = {"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "bias": torch.ones(2)}
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save(state, path)
    assert register_weights(path, "tiny", mlflow_server.uri) == "1"
    assert register_weights(path, "tiny", mlflow_server.uri, aliases=["prod"]) == "2"
    return state


@pytest.mark.parametrize("uri", ["models:/tiny/1", "models:/tiny@prod"])
def test_models_uri_resolves_to_the_weights_file(mlflow_server, registered, uri: str) -> None:
    path = resolve_model_uri(uri, mlflow_server.uri)
    assert Path(path).name == "tiny.pth"
    loaded = torch.load(path, weights_only=True)
    assert loaded.keys() == registered.keys()
    assert all(torch.equal(loaded[k], registered[k]) for k in registered)


def test_models_uri_errors_are_clear(mlflow_server, registered, tmp_path: Path) -> None:
    with pytest.raises(ModelResolutionError, match="models:/tiny/9"):
        resolve_model_uri("models:/tiny/9", mlflow_server.uri)
    with pytest.raises(ModelResolutionError, match="tiny@nope"):
        resolve_model_uri("models:/tiny@nope", mlflow_server.uri)

    client = MlflowClient(mlflow_server.uri)
    run = client.create_run(client.get_experiment_by_name("vmb-weights").experiment_id)
    for name in ("a.pt", "b.safetensors", "notes.txt"):
        (tmp_path / name).write_bytes(b"0")
        client.log_artifact(run.info.run_id, str(tmp_path / name), artifact_path="two")
    client.set_terminated(run.info.run_id)
    with pytest.raises(ModelResolutionError, match=r"exactly one weights file .*found 2"):
        resolve_model_uri(f"runs:/{run.info.run_id}/two", mlflow_server.uri)
    assert resolve_model_uri(f"runs:/{run.info.run_id}/two/a.pt", mlflow_server.uri).endswith(
        "a.pt"
    )
    assert resolve_model_uri("/plain/path.pth", mlflow_server.uri) == "/plain/path.pth"


def test_run_of_a_degraded_tracker_is_closed_as_failed(mlflow_server) -> None:
    tracker = JobTracker(mlflow_server.uri, "mid-job", "job")
    run_id = tracker.start({"a": 1}, tags={})
    tracker.log_metrics({"clips_per_s": "n/a"})  # type: ignore[dict-item]  # a bug in the caller
    assert tracker.failed is not None and "ValueError" in tracker.failed
    tracker.end("FINISHED")
    run = MlflowClient(mlflow_server.uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["vmb.tracking_error"] == tracker.failed
