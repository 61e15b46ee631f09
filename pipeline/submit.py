"""Submitting a job to a Ray cluster through the Ray Jobs API.

The working directory is uploaded as the job's ``working_dir`` (minus :data:`UPLOAD_EXCLUDES`
and whatever ``.gitignore`` files exclude); the entrypoint runs ``vmb run`` on the cluster, whose
driver connects to that cluster. Paths in the spec (``input``, ``output``) are read on the
cluster, so they must be URIs or paths the cluster's nodes can reach.

Token authentication (Ray >= 2.52; a head started with ``RAY_AUTH_MODE=token``, or, since Ray
2.59, any ``ray start --head`` that finds a token) expects ``Authorization: Bearer <token>`` on
every Jobs API request. The token sent is the first of: the ``token`` argument (``vmb ...
--token``), ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``
(written by ``ray get-auth-token --generate``) -- Ray's own order. Unlike Ray's client, which
sends a token only when ``RAY_AUTH_MODE=token`` is set in the client's shell too, it is sent
whenever one is found.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import UserError

UPLOAD_EXCLUDES = [
    ".venv",
    ".vmb",
    ".git",
    "**/__pycache__",
    "*.mp4",
    "*.pth",
    "*.pkl",
    "mlruns",
    "mlflow.db",
    "bench/results",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
]

_TOKEN_HINT = (
    "pass --token TOKEN or set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH); "
    "`ray get-auth-token` on the head prints the cluster's token"
)


class SubmitError(UserError, RuntimeError):
    """The Ray Jobs API refused the request or could not be reached."""


def resolve_token(token: str | None = None) -> tuple[str | None, str]:
    """The auth token to send and where it came from (for messages; never the token itself).

    Same sources and precedence as Ray's own token loader, read here rather than through it:
    the loader is process-wide state that a Ray driver in this process may be using.

    Raises:
        SubmitError: ``RAY_AUTH_TOKEN_PATH`` names a file that cannot be read or is empty.
    """
    if token:
        return token.strip(), "--token"
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            found = path.read_text().strip()
        except OSError as err:
            raise SubmitError(
                f"RAY_AUTH_TOKEN_PATH={path} cannot be read: {err.strerror}"
            ) from None
        if not found:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path} is empty")
        return found, f"RAY_AUTH_TOKEN_PATH={path}"
    default = Path.home() / ".ray" / "auth_token"
    try:
        found = default.read_text().strip()
    except OSError:
        found = ""
    return (found, str(default)) if found else (None, "none found")


@contextlib.contextmanager
def _jobs_api(address: str | None, token: str | None) -> Iterator:
    """A ``JobSubmissionClient`` for ``address``; every failure becomes one :class:`SubmitError`."""
    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    token, source = resolve_token(token)
    where = address or "the default address (set --address or RAY_API_SERVER_ADDRESS)"
    try:
        yield JobSubmissionClient(
            address, headers={"Authorization": f"Bearer {token}"} if token else None
        )
    except AuthenticationError as err:
        if token is None:
            raise SubmitError(
                f"the Ray Jobs API at {where} requires an auth token and none was "
                f"found: {_TOKEN_HINT}"
            ) from None
        raise SubmitError(
            f"the Ray Jobs API at {where} refused the auth token from {source} "
            f"({_first_line(err)}): {_TOKEN_HINT}"
        ) from None
    except (ConnectionError, requests.RequestException) as err:
        raise SubmitError(f"cannot reach the Ray Jobs API at {where}: {_first_line(err)}") from None
    except (RuntimeError, ValueError) as err:  # the SDK reports HTTP errors as RuntimeError
        raise SubmitError(f"Ray Jobs API at {where}: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def check_cluster_paths(spec) -> None:
    """Refuse relative local paths in a spec bound for a cluster: the job would resolve them in
    its unpacked working dir there, and its tables would vanish with it.

    Raises:
        SubmitError: ``input`` or ``output`` is a relative path.
    """
    for key in ("input", "output"):
        value = str(getattr(spec, key))
        if "://" not in value and not Path(value).is_absolute():
            raise SubmitError(
                f"{key} = {value!r} is a relative path, which the job would resolve "
                f"in its temporary working dir on the cluster; use an absolute path "
                f"or a URI the cluster can reach (--set {key}=...)"
            )


def submit(
    spec_path: str,
    address: str | None,
    overrides: list[str] | None = None,
    working_dir: str | None = None,
    token: str | None = None,
) -> str:
    """Submit ``vmb run spec_path`` to the cluster; returns the Ray job id.

    The entrypoint uses this interpreter's path (``sys.executable``), so the cluster's nodes need
    the same Python environment at the same path (a shared image or filesystem).
    """
    working_dir = str(Path(working_dir or os.getcwd()).resolve())
    spec = Path(spec_path).resolve()
    try:
        rel = spec.relative_to(working_dir)
    except ValueError:
        raise SubmitError(
            f"{spec_path} must lie inside the uploaded working dir {working_dir}"
        ) from None
    args = ["run", str(rel), "--no-progress"] + [x for o in (overrides or []) for x in ("--set", o)]
    entrypoint = f"{shlex.quote(sys.executable)} -m pipeline.cli " + " ".join(
        shlex.quote(a) for a in args
    )
    with _jobs_api(address, token) as client:
        return client.submit_job(
            entrypoint=entrypoint,
            runtime_env={"working_dir": working_dir, "excludes": UPLOAD_EXCLUDES},
        )


def status(job_id: str, address: str | None, token: str | None = None) -> str:
    """The job's status: PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    with _jobs_api(address, token) as client:
        return str(client.get_job_status(job_id))


def logs(job_id: str, address: str | None, token: str | None = None) -> str:
    """Everything the job's driver printed so far (the ``vmb run`` summary at the end)."""
    with _jobs_api(address, token) as client:
        return client.get_job_logs(job_id)


def stop(job_id: str, address: str | None, token: str | None = None) -> bool:
    """Ask the cluster to stop the job; False if it had already finished."""
    with _jobs_api(address, token) as client:
        return bool(client.stop_job(job_id))
