"""MLflow tracking: one run per job, plus model-registry helpers for weights.

A job gets exactly one MLflow run. :class:`JobTracker` creates it with the job spec as
(flattened, redacted) params and runtime facts as tags, logs metrics while the job runs, attaches
the job's artifacts at the end and closes the run with a final status::

    tracker = JobTracker(spec.mlflow.tracking_uri, spec.mlflow.experiment, run_name, fail_fast)
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
import posixpath
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
from types import TracebackType
from typing import Any, Literal

from pipeline.uris import REDACTED, redact, redact_uri

logger = logging.getLogger(__name__)

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]

WEIGHTS_SUFFIXES = (".pth", ".pt", ".pkl", ".safetensors")

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
_REGISTRY_SCHEMES = ("models:/", "runs:/")


class TrackingUnavailableError(RuntimeError):
    """The tracking store cannot be reached or used, and the job asked to fail fast."""


class ModelResolutionError(ValueError):
    """A ``models:/`` or ``runs:/`` URI does not resolve to exactly one weights file."""


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
        fail_fast: bool = False,
        *,
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
                    f"{type(exc).__name__}: {_first_line(exc)}"
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
            failed_videos: One mapping per video whose status is not ``ok``.
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
                _plot_throughput(throughput, out / "throughput.png")
                _plot_label_histogram(label_counts, out / "label_histogram.png")
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

    def __enter__(self) -> JobTracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")

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

        experiment_id = _get_or_create_experiment(self._client, self.experiment, self.tracking_uri)
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
        self.failed = f"{what} failed: {type(exc).__name__}: {_first_line(exc)}"
        logger.warning(
            "MLflow %s; tracking disabled for the rest of the job", self.failed, exc_info=True
        )


# -- model registry ------------------------------------------------------------------------


def resolve_model_uri(
    uri: str, tracking_uri: str | None = None, dst_path: str | None = None
) -> str:
    """Local path of the weights file behind a ``models:/`` or ``runs:/`` URI.

    Accepts ``models:/name/version``, ``models:/name@alias`` and ``runs:/run_id/path``. The
    artifact is downloaded with :func:`mlflow.artifacts.download_artifacts`; it must be, or
    contain, exactly one weights file (``.pth``, ``.pt``, ``.pkl``, ``.safetensors``). Any other
    URI (a local path, ``s3://...``) is returned unchanged.

    Args:
        uri: Weights URI from a job spec.
        tracking_uri: Tracking/registry store; ``None`` as in :class:`JobTracker`.
        dst_path: Download directory; default is a fresh temporary directory.

    Returns:
        Path of the weights file on the local filesystem.

    Raises:
        ModelResolutionError: The URI resolves to zero or several weights files, or MLflow
            cannot resolve it (unknown model, version, alias or run).
    """
    if not uri.startswith(_REGISTRY_SCHEMES):
        return uri
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    store = resolve_tracking_uri(tracking_uri)
    if store.startswith(("http://", "https://")):
        bound_http_retries()
    try:
        artifact_uri = _registry_download_uri(uri, store) if uri.startswith("models:/") else uri
        local = Path(
            download_artifacts(
                artifact_uri=artifact_uri, dst_path=dst_path, tracking_uri=store, registry_uri=store
            )
        )
    except (MlflowException, OSError) as exc:
        raise ModelResolutionError(
            f"cannot resolve {uri} at {redact_uri(store)}: " f"{_first_line(exc)}"
        ) from exc
    candidates = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    weights = [p for p in candidates if p.suffix in WEIGHTS_SUFFIXES]
    if len(weights) != 1:
        found = (
            ", ".join(str(p.relative_to(local) if p != local else p.name) for p in candidates)
            or "nothing"
        )
        raise ModelResolutionError(
            f"{uri} must hold exactly one weights file ({'/'.join(WEIGHTS_SUFFIXES)}), "
            f"found {len(weights)} among: {found}"
        )
    logger.info("resolved %s to %s", uri, weights[0])
    return str(weights[0])


def register_weights(
    path: str | os.PathLike[str],
    name: str,
    tracking_uri: str | None = None,
    *,
    experiment: str = "vmb-weights",
    aliases: Sequence[str] = (),
) -> str:
    """Publish a weights file as a new version of a registered model.

    Logs the file under ``weights/`` of a new run in ``experiment`` and registers that folder as a
    version of ``name`` (created if absent), so that ``models:/name/<version>`` (or
    ``models:/name@alias``) works as ``weights`` in a job spec.

    Args:
        path: Local weights file (``.pth``, ``.pt``, ``.pkl`` or ``.safetensors``).
        name: Registered model name.
        tracking_uri: Tracking/registry store; ``None`` as in :class:`JobTracker`.
        experiment: Experiment holding the publishing run.
        aliases: Aliases to point at the new version (e.g. ``["prod"]``).

    Returns:
        The new version number, as MLflow reports it (a string such as ``"1"``).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: ``path`` is not a weights file.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    weights = Path(path)
    if not weights.is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")
    if weights.suffix not in WEIGHTS_SUFFIXES:
        raise ValueError(f"{weights} is not a weights file ({', '.join(WEIGHTS_SUFFIXES)})")
    store = resolve_tracking_uri(tracking_uri)
    if store.startswith(("http://", "https://")):
        bound_http_retries()
    elif store.startswith("sqlite:///"):
        Path(store.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    experiment_id = _get_or_create_experiment(client, experiment, store)
    run = client.create_run(
        experiment_id,
        run_name=f"register-{name}",
        tags={"vmb.weights.name": name, "vmb.weights.file": weights.name},
    )
    try:
        client.log_artifact(run.info.run_id, str(weights), artifact_path="weights")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    version = client.create_model_version(
        name, source=posixpath.join(run.info.artifact_uri, "weights"), run_id=run.info.run_id
    )
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    logger.info("registered %s as %s version %s", weights.name, name, version.version)
    return str(version.version)


def _registry_download_uri(models_uri: str, store: str) -> str:
    """Where the artifacts of ``models:/name/version[/sub/path]`` (or ``@alias``) live.

    MLflow's own ``models:/`` repository looks the name up in the *global* registry URI and
    ignores the one passed to ``download_artifacts``, so resolve it with an explicit client.
    """
    from mlflow import MlflowClient
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    base, sub_path = ModelsArtifactRepository.split_models_uri(models_uri)
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    name_and_version = get_model_name_and_version(client, base)
    if len(name_and_version) == 1:  # models:/<logged model id>
        root = client.get_logged_model(name_and_version[0]).artifact_location
    else:
        root = client.get_model_version_download_uri(*name_and_version)
    return posixpath.join(root, sub_path) if sub_path else root


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


def _get_or_create_experiment(client: Any, name: str, tracking_uri: str) -> str:
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


def _new_figure() -> Any:
    # Figure + Agg canvas, not pyplot: no global state or display backend; thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_throughput(samples: Sequence[tuple[float, int]], path: Path) -> None:
    fig = _new_figure()
    ax = fig.add_subplot()
    points = sorted((float(t), int(n)) for t, n in samples)
    if points:
        seconds, clips = zip(*points)
        ax.plot(seconds, clips, marker="." if len(points) < 50 else None)
        if seconds[-1] > seconds[0]:
            rate = (clips[-1] - clips[0]) / (seconds[-1] - seconds[0])
            ax.set_title(f"Throughput: {rate:.2f} clips/s")
    else:
        ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("elapsed (s)")
    ax.set_ylabel("clips done")
    ax.grid(True, alpha=0.3)
    fig.savefig(path)


def _plot_label_histogram(label_counts: Mapping[str, int], path: Path, top: int = 30) -> None:
    fig = _new_figure()
    ax = fig.add_subplot()
    items = sorted(label_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    if items:
        labels, counts = zip(*reversed(items))  # most frequent on top
        ax.barh(range(len(labels)), counts)
        ax.set_yticks(range(len(labels)), [str(label)[:40] for label in labels], fontsize=7)
        title = (
            "Top-1 labels"
            if len(label_counts) <= top
            else f"Top {top} of {len(label_counts)} labels"
        )
        ax.set_title(title)
    else:
        ax.text(0.5, 0.5, "no labels", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("clips")
    fig.savefig(path)


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


def _first_line(exc: BaseException) -> str:
    text = redact_uri(str(exc)).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
