"""Submitting a job to a Ray cluster through the Ray Jobs API.

The working directory is uploaded as the job's ``working_dir``; the entrypoint runs
``vmb run`` on the cluster. Token authentication: a head started with token auth expects the
token in ``RAY_AUTH_TOKEN`` (or the token file written by ``ray get-auth-token --generate``);
``--token`` / ``VMB_RAY_TOKEN`` set it for this client.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

UPLOAD_EXCLUDES = [".venv", ".vmb", ".git", "**/__pycache__", "*.mp4", "*.pth", "*.pkl", "mlruns",
                   "bench/results"]


class SubmitError(RuntimeError):
    """The Ray Jobs API refused or could not be reached."""


def _client(address: str, token: str | None = None):
    from ray.job_submission import JobSubmissionClient

    token = token or os.environ.get("VMB_RAY_TOKEN")
    if token:
        os.environ["RAY_AUTH_TOKEN"] = token
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SubmitError(f"cannot reach the Ray Jobs API at {address}: {err}") from None


def submit(spec_path: str, address: str, overrides: list[str] | None = None,
           working_dir: str | None = None, token: str | None = None) -> str:
    """Submit ``vmb run spec_path`` to the cluster; returns the Ray job id."""
    working_dir = str(Path(working_dir or os.getcwd()).resolve())
    spec = Path(spec_path).resolve()
    try:
        rel = spec.relative_to(working_dir)
    except ValueError:
        raise SubmitError(f"{spec_path} must lie inside the uploaded working dir {working_dir}") from None
    args = ["run", str(rel), "--no-progress"] + [x for o in (overrides or []) for x in ("--set", o)]
    entrypoint = f"{shlex.quote(sys.executable)} -m pipeline.cli " + " ".join(shlex.quote(a) for a in args)
    client = _client(address, token)
    return client.submit_job(entrypoint=entrypoint,
                             runtime_env={"working_dir": working_dir, "excludes": UPLOAD_EXCLUDES})


def status(job_id: str, address: str, token: str | None = None) -> str:
    return str(_client(address, token).get_job_status(job_id))


def logs(job_id: str, address: str, token: str | None = None) -> str:
    return _client(address, token).get_job_logs(job_id)


def stop(job_id: str, address: str, token: str | None = None) -> bool:
    return bool(_client(address, token).stop_job(job_id))
