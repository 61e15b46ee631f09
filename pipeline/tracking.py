"""MLflow tracking: one run per job (``JobTracker``), and where the tracking store is.

Weights in the MLflow model registry: ``pipeline.model_registry``; the run's plots:
``pipeline.plots``.

A job gets exactly one MLflow run. :class:`JobTracker` creates it with the job spec as
(flattened, redacted) params and runtime facts as tags, logs metrics while the job runs, attaches
the job's artifacts at the end and closes the run with a final status::

    tracker = JobTracker(spec.mlflow.tracking_uri, spec.mlflow.experiment, run_name,
                         fail_fast=spec.mlflow.fail_fast)
    run_id = tracker.start(spec_dict, tags=runtime_tags())
    tracker.log_metrics({"clips_done": 128.0}, step=3)
    tracker.log_artifacts(spec_text, summary, failed_videos, throughput, label_counts)
    tracker.end("FINISHED")

Failure policy (tracking never costs the user their tables):

* **Unreachable at start.** Before creating anything the tracker probes the store (``GET
  /health`` with a short timeout for ``http(s)`` servers; for other stores the first request is
  the probe). With ``fail_fast=True`` an unreachable or failing store raises
  :class:`TrackingUnavailableError` from :meth:`JobTracker.start`, i.e. before the job does any
  work. With ``fail_fast=False`` (the default) it logs a warning, records the reason in
  :attr:`JobTracker.failed`, and every later call is a no-op: the job still writes its tables.
* **Error mid-job.** Any error while logging metrics or artifacts is logged as a warning with
  its traceback, recorded in :attr:`JobTracker.failed`, and turns every later logging call into
  a no-op. It is never raised: the job goes on. :meth:`JobTracker.end` still makes one
  best-effort attempt to close the run as ``FAILED`` and tag it with the reason, so the run
  does not stay ``RUNNING`` forever when the server comes back.
* **Bounded waits.** MLflow's HTTP client retries for minutes by default (7 retries, backoff
  factor 2, 120 s timeout). For ``http(s)`` stores the tracker lowers the defaults of
  ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (2), ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (1) and
  ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (15 s) in this process, unless the user set them, so a dead
  server costs seconds, not minutes.
* **Calling order.** Logging before :meth:`JobTracker.start` or after :meth:`JobTracker.end` is a
  programming error and raises :class:`RuntimeError` (unless tracking has already failed, in
  which case it is a no-op like everything else).

Credentials never reach MLflow: params, tags and every artifact pass through
:func:`pipeline.uris.redact` (``user:secret@`` in URIs, signed-URL query parameters, and values
of secret-looking keys such as ``key``/``secret``/``token``).

Tracking store resolution: the ``tracking_uri`` argument, else ``MLFLOW_TRACKING_URI``, else
:func:`default_tracking_uri` (``sqlite:///<cwd>/.vmb/mlflow.db``, with artifacts next to it) —
never MLflow's own default of ``mlflow.db``/``mlruns`` in the current directory.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import UserError
from pipeline.plots import plot_label_histogram, plot_throughput
from pipeline.uris import REDACTED, redact, redact_uri

logger = logging.getLogger(__name__)

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]


# MLflow's server-side limits (mlflow.utils.validation); exceeding them fails the whole batch.
MAX_PARAM_VALUE_CHARS = 6000
MAX_TAG_VALUE_CHARS = 8000
MAX_KEY_CHARS = 250
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_TRUNCATED = "...[truncated]"
_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- ]")

# Bounded HTTP behaviour for the MLflow client; user-set values win (see module docstring).
_HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
_PROBE_TIMEOUT_S = 3.0


class TrackingUnavailableError(UserError, RuntimeError):
    """The tracking store cannot be reached or used, and the job asked to fail fast."""


def default_tracking_uri() -> str:
    """The tracking store used when neither the job nor ``MLFLOW_TRACKING_URI`` names one.

    Returns:
        ``sqlite:///<cwd>/.vmb/mlflow.db`` as an absolute URI (the directory is created on use).
    """
    return f"sqlite:///{Path.cwd().resolve() / '.vmb' / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The tracking URI actually used: argument, else ``MLFLOW_TRACKING_URI``, else the default."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def runtime_tags() -> dict[str, str]:
    """Tags describing where and with what the job runs.

    Returns:
        ``vmb.hostname``, ``vmb.version.<package>`` for torch, ray, decord, mlflow and vmb
        (``"not installed"`` when absent) and, when Ray is initialised in this process,
        ``vmb.ray.nodes`` (alive nodes), ``vmb.ray.cpus`` and ``vmb.ray.gpus`` (cluster totals).
    """
    tags = {"vmb.hostname": socket.gethostname()}
    for package in ("torch", "ray", "decord", "mlflow", "vmb"):
        try:
            tags[f"vmb.version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            tags[f"vmb.version.{package}"] = "not installed"
    try:
        import ray
    except ImportError:
        return tags
    if ray.is_initialized():
        resources = ray.cluster_resources()
        tags["vmb.ray.nodes"] = str(sum(1 for node in ray.nodes() if node.get("Alive")))
        tags["vmb.ray.cpus"] = _format_number(resources.get("CPU", 0))
        tags["vmb.ray.gpus"] = _format_number(resources.get("GPU", 0))
    return tags


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested spec into MLflow params with dotted keys.

    Lists of mappings (e.g. ``[[models]]``) get their index as a key segment
    (``models.0.name``); other lists become JSON. Keys are cleaned of characters MLflow rejects
    and values are truncated to MLflow's 6000-character limit. No redaction happens here.

    Args:
        params: The nested spec.
        prefix: Key prefix, used by the recursion.

    Returns:
        Flat ``{key: value}`` with string values.
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{full}."))
        elif (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, Mapping) for v in value)
        ):
            for index, item in enumerate(value):
                flat.update(flatten_params(item, f"{full}.{index}."))
        else:
            flat[_clean_key(full)] = _truncate(_param_text(value), MAX_PARAM_VALUE_CHARS)
    return flat


def redact_toml_text(text: str) -> str:
    """Redact credentials in TOML source text, keeping its layout and comments.

    Hides ``user:secret@`` in URIs and signed-URL parameters anywhere in the text, and the values
    of secret-looking keys (``key = "..."``, also inside inline tables). The result is checked by
    parsing it: if a secret survives or the text is not TOML, :class:`ValueError` is raised so the
    caller can fall back to a structured dump.

    Raises:
        ValueError: The text could not be redacted reliably.
    """
    import tomllib

    out = _TOML_SECRET_VALUE.sub(lambda m: f'{m["k"]}{m["sep"]}"{REDACTED}"', redact_uri(text))
    try:
        parsed = tomllib.loads(out)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"spec text is not TOML: {exc}") from exc
    if redact(parsed) != parsed:
        raise ValueError("a credential survived line-level redaction of the spec text")
    return out


# A bare or quoted TOML key whose last segment looks secret, then `=`, then one value.
_TOML_SECRET_VALUE = re.compile(
    r"""(?P<k>(?:^|(?<=[\s{,.]))["']?[\w\-]*(?:secret|password|passwd|token|key|credential|session)[\w\-]*["']?)"""
    r"""(?P<sep>\s*=\s*)(?P<v>"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^,}\s#]+)""",
    re.IGNORECASE | re.MULTILINE,
)


class JobTracker:
    """One MLflow run for one job, degrading to no-ops when tracking fails.

    See the module docstring for the failure policy. Thread-safe: the runner may log metrics
    from a progress thread.

    Args:
        tracking_uri: MLflow tracking URI; ``None`` means ``MLFLOW_TRACKING_URI`` or
            :func:`default_tracking_uri`.
        experiment: Experiment name, created if absent.
        run_name: Display name of the run.
        fail_fast: Raise :class:`TrackingUnavailableError` from :meth:`start` instead of
            degrading when the store is unusable at start.
        probe_timeout_s: Timeout of the ``/health`` probe of ``http(s)`` servers.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment: str,
        run_name: str,
        *,
        fail_fast: bool = False,
        probe_timeout_s: float = _PROBE_TIMEOUT_S,
    ) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.fail_fast = fail_fast
        self.probe_timeout_s = probe_timeout_s
        self.failed: str | None = None
        """Why tracking stopped (``None`` while it works); set instead of raising."""
        self.run_id: str | None = None
        self._client: Any = None
        self._ended = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        state = (
            "failed"
            if self.failed
            else "ended"
            if self._ended
            else "active"
            if self.run_id
            else "new"
        )
        return (
            f"JobTracker(uri={redact_uri(self.tracking_uri)!r}, experiment={self.experiment!r}, "
            f"run_id={self.run_id!r}, state={state})"
        )

    @property
    def active(self) -> bool:
        """Whether calls currently reach MLflow."""
        return self.run_id is not None and self.failed is None and not self._ended

    def start(self, params: Mapping[str, Any], tags: Mapping[str, Any] | None = None) -> str | None:
        """Create the run and log the spec as params.

        Args:
            params: The nested job spec; flattened to dotted keys and redacted.
            tags: Extra run tags (e.g. :func:`runtime_tags`); values are redacted.

        Returns:
            The run id, or ``None`` when tracking is unavailable and ``fail_fast`` is off.

        Raises:
            TrackingUnavailableError: The store is unusable and ``fail_fast`` is on.
            RuntimeError: ``start`` was already called.
        """
        with self._lock:
            if self.run_id is not None or self.failed is not None or self._ended:
                raise RuntimeError(f"{self!r} was already started")
            try:
                self._connect()
                self.run_id = self._create_run(params, tags or {})
            except Exception as exc:  # noqa: BLE001 - any store error means "unavailable"
                reason = (
                    f"tracking store {redact_uri(self.tracking_uri)} unavailable: "
                    f"{type(exc).__name__}: {first_line(exc)}"
                )
                if self.fail_fast:
                    raise TrackingUnavailableError(reason) from exc
                self.failed = reason
                logger.warning("%s; continuing without tracking (mlflow.fail_fast is off)", reason)
                return None
            logger.info(
                "tracking job as MLflow run %s in experiment %r at %s",
                self.run_id,
                self.experiment,
                redact_uri(self.tracking_uri),
            )
            return self.run_id

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Add run tags (values redacted). A no-op once tracking has failed."""
        from mlflow.entities import RunTag

        def call() -> None:
            batch = [RunTag(_clean_key(str(k)), str(redact(v))[:5000]) for k, v in tags.items()]
            self._client.log_batch(self.run_id, tags=batch)

        self._guarded("set_tags", call)

    def log_metrics(self, metrics: Mapping[str, float | None], step: int | None = None) -> None:
        """Log numeric metrics (at ``step`` when given). A no-op once tracking has failed.

        Keys are cleaned of characters MLflow rejects (as for params); ``None`` values are
        skipped, so one undefined ratio does not cost the rest of the run's tracking.
        """
        from mlflow.entities import Metric

        def call() -> None:
            now = int(time.time() * 1000)
            batch = [
                Metric(_clean_key(str(key)), float(value), now, step or 0)
                for key, value in metrics.items()
                if value is not None
            ]
            for i in range(0, len(batch), _METRICS_PER_BATCH):
                self._client.log_batch(self.run_id, metrics=batch[i : i + _METRICS_PER_BATCH])

        self._guarded("log_metrics", call)

    def log_artifacts(
        self,
        spec_text: str,
        summary: Mapping[str, Any],
        failed_videos: Sequence[Mapping[str, Any]],
        throughput: Sequence[tuple[float, int]],
        label_counts: Mapping[str, int],
    ) -> None:
        """Attach the job's artifacts to the run, all redacted.

        Writes ``spec.toml`` (``spec.json`` if the text cannot be redacted reliably),
        ``summary.json``, ``failed_videos.csv``, ``throughput.png`` (clips done over elapsed
        seconds) and ``label_histogram.png`` (the most frequent top-1 labels). A no-op once
        tracking has failed.

        Args:
            spec_text: The job spec as the user wrote it (TOML).
            summary: Counts, timings and paths of the finished job.
            failed_videos: One mapping per failed video (the job passes its first
                ``pipeline.job.FAILURES_KEPT``).
            throughput: ``(elapsed seconds, clips done)`` samples.
            label_counts: Label to number of clips.
        """

        def call() -> None:
            with tempfile.TemporaryDirectory(prefix="vmb-artifacts-") as tmp:
                out = Path(tmp)
                _write_spec(out, spec_text)
                (out / "summary.json").write_text(
                    json.dumps(redact(dict(summary)), indent=2, sort_keys=True, default=str) + "\n"
                )
                (out / "failed_videos.csv").write_text(_failed_videos_csv(failed_videos))
                plot_throughput(throughput, out / "throughput.png")
                plot_label_histogram(label_counts, out / "label_histogram.png")
                self._client.log_artifacts(self.run_id, tmp)

        self._guarded("log_artifacts", call)

    def end(self, status: RunStatus = "FINISHED") -> None:
        """Close the run with ``status``; idempotent.

        After a mid-job tracking failure this makes one best-effort attempt to mark the run
        ``FAILED`` with a ``vmb.tracking_error`` tag; errors are logged, never raised.
        """
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, not {status!r}")
        with self._lock:
            if self._ended:
                return
            self._ended = True
            if self.run_id is None:
                return
            try:
                if self.failed is not None:
                    self._client.set_tag(
                        self.run_id,
                        "vmb.tracking_error",
                        _truncate(self.failed, MAX_TAG_VALUE_CHARS),
                    )
                    status = "FAILED"
                self._client.set_terminated(self.run_id, status)
            except Exception as exc:  # noqa: BLE001 - tracking must never kill the job
                self._record_failure("end", exc)

    # -- internals -------------------------------------------------------------------------

    def _connect(self) -> None:
        from mlflow import MlflowClient

        if self.tracking_uri.startswith(("http://", "https://")):
            bound_http_retries()
            _probe_http(self.tracking_uri, self.probe_timeout_s)
        elif self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _create_run(self, params: Mapping[str, Any], tags: Mapping[str, Any]) -> str:
        from mlflow.entities import Param

        experiment_id = get_or_create_experiment(self._client, self.experiment, self.tracking_uri)
        run_tags = {
            str(k): _truncate(str(v), MAX_TAG_VALUE_CHARS) for k, v in redact(dict(tags)).items()
        }
        run = self._client.create_run(experiment_id, tags=run_tags, run_name=self.run_name)
        flat = flatten_params(redact(dict(params)))
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            self._client.log_batch(run.info.run_id, params=items[i : i + _PARAMS_PER_BATCH])
        return run.info.run_id

    def _guarded(self, what: str, call: Any) -> None:
        with self._lock:
            if self.failed is not None:
                return
            if self.run_id is None or self._ended:
                raise RuntimeError(f"{what} needs a started, not yet ended run: {self!r}")
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - tracking must never kill the job
                self._record_failure(what, exc)

    def _record_failure(self, what: str, exc: BaseException) -> None:
        self.failed = f"{what} failed: {type(exc).__name__}: {first_line(exc)}"
        logger.warning(
            "MLflow %s; tracking disabled for the rest of the job", self.failed, exc_info=True
        )


def bound_http_retries() -> None:
    """Lower MLflow's HTTP retry/timeout defaults in this process unless the user set them."""
    for key, value in _HTTP_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


# -- helpers -------------------------------------------------------------------------------


def _probe_http(uri: str, timeout_s: float) -> None:
    """Raise ConnectionError unless an MLflow server answers at ``uri`` within ``timeout_s``."""
    url = f"{uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http(s) only
            response.read(64)
    except urllib.error.HTTPError as exc:
        # Reachable; 4xx (auth, proxies without /health) is left to the real requests to judge.
        if exc.code >= 500:
            raise ConnectionError(f"{redact_uri(url)} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"no MLflow server at {redact_uri(url)}: {reason}") from exc


def get_or_create_experiment(client: Any, name: str, tracking_uri: str) -> str:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        # MLflow would default to ./mlruns; keep local artifacts next to the database.
        location = (
            (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
        )
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as exc:  # another job created it concurrently
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(name).experiment_id


def _write_spec(out: Path, spec_text: str) -> None:
    try:
        (out / "spec.toml").write_text(redact_toml_text(spec_text))
    except ValueError as exc:
        import tomllib

        logger.warning("spec.toml not logged verbatim (%s); logging a redacted spec.json", exc)
        try:
            parsed: Any = redact(tomllib.loads(spec_text))
        except tomllib.TOMLDecodeError:
            parsed = {"unparsed_spec": "spec text was not TOML and is not logged"}
        (out / "spec.json").write_text(json.dumps(parsed, indent=2, default=str) + "\n")


def _failed_videos_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer,
        fieldnames=columns or ["video_id", "video_uri", "status", "error_type", "error_message"],
    )
    writer.writeheader()
    for row in rows:
        writer.writerow(redact(dict(row)))
    return buffer.getvalue()


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, Mapping)):
        return json.dumps(value, default=str)
    return str(value)


def _clean_key(key: str) -> str:
    return _INVALID_KEY_CHARS.sub("_", key)[:MAX_KEY_CHARS]


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(_TRUNCATED)] + _TRUNCATED


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def first_line(exc: BaseException) -> str:
    text = redact_uri(str(exc)).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
