"""Weights in the MLflow model registry: resolve ``models:/`` and ``runs:/`` URIs to a local
weights file, and publish a weights file as a registered model version."""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import UserError
from pipeline.tracking import (
    bound_http_retries,
    first_line,
    get_or_create_experiment,
    resolve_tracking_uri,
)
from pipeline.uris import redact_uri

logger = logging.getLogger(__name__)

WEIGHTS_SUFFIXES = (".pth", ".pt", ".pkl", ".safetensors")
_REGISTRY_SCHEMES = ("models:/", "runs:/")


class ModelResolutionError(UserError, ValueError):
    """A ``models:/`` or ``runs:/`` URI does not resolve to exactly one weights file."""


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
            f"cannot resolve {uri} at {redact_uri(store)}: {first_line(exc)}"
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
    experiment_id = get_or_create_experiment(client, experiment, store)
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
