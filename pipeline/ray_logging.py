"""Keep Ray's own log lines off the terminal of ``vmb run``; they stay in Ray's log files.

Two sources print into the progress bar of a plain run:

- Ray's Python logger (``ray.*``: the token-authentication notice, "Started a local Ray
  instance"). ``ray.init`` resets the ``ray`` logger to its ``logging_level`` argument (INFO by
  default), so a level set before it is lost: the driver's ``ray.init`` passes
  ``ray_init_kwargs()``.
- Ray Data's notice that its progress bars are off (the job draws its own) and its warning that
  a stage may run more tasks than a small job has blocks: ``skip_expected_ray_notices``.
- The C++ core worker of the driver, which copies every ERROR line of its log file
  (``python-core-driver-*.log`` in the session's logs folder) to file descriptor 2, e.g. Ray
  Data's actor pools trigger "has constructor arguments in the object store and max_restarts
  > 0". ``RAY_BACKEND_LOG_LEVEL`` would silence it, but every Ray process inherits it and Ray's
  log files lose those lines too; so ``native_stderr_to_file`` points descriptor 2 of the driver
  at a file while Python's ``sys.stderr`` (progress bars, our warnings, errors) keeps the
  terminal.

Ray's logs: ``/tmp/ray/session_latest/logs`` (``RAY_TMPDIR`` moves ``/tmp/ray``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def ray_init_kwargs(*, verbose: bool = False) -> dict[str, Any]:
    """Logging arguments for the driver's ``ray.init``: Ray's INFO/WARNING lines only with
    ``--verbose``; worker output in the workers' log files, not streamed to the driver."""
    return {"logging_level": logging.INFO if verbose else logging.ERROR, "log_to_driver": False}


# Notices Ray logs once per process (``ray.util.debug.log_once``) about choices the job makes on
# purpose: it draws its own progress bar, so Ray Data's are off.
_EXPECTED_NOTICES = ("ray_data_progress_manager_disabled",)


# Ray Data's warning that a task stage was allowed more tasks than it has input blocks: the
# writer stage is given room for several tasks, and a small job has fewer blocks than that.
_EXPECTED_WARNINGS = (r"The maximum number of concurrent tasks for .* is set to",)


def skip_expected_ray_notices() -> None:
    """Mark the notices about the job's deliberate settings as already shown, and leave out
    Ray Data's warnings about them."""
    # Imported here: the CLI imports this module for every command, and Ray costs a second.
    from ray.util.debug import log_once

    for key in _EXPECTED_NOTICES:
        log_once(key)
    for message in _EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


def native_log_path() -> Path:
    """Where the driver's native stderr goes during a quiet run: beside Ray's session folders."""
    root = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    return root / f"vmb-driver-{os.getpid()}.err"


@contextlib.contextmanager
def native_stderr_to_file(path: Path | None = None) -> Iterator[Path | None]:
    """Send what native code writes to file descriptor 2 to ``path``; Python's ``sys.stderr``
    keeps writing to the terminal. Restored on exit.

    Does nothing (yields None) when ``sys.stderr`` is not the process's descriptor 2, e.g. under
    a test runner that captures output.
    """
    stream = sys.stderr
    if stream is not sys.__stderr__ or _fileno(stream) != 2:
        yield None
        return
    path = path or native_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    stream.flush()
    terminal = os.dup(2)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = io.TextIOWrapper(
        os.fdopen(terminal, "wb", buffering=0),
        encoding=stream.encoding,
        errors="backslashreplace",
        write_through=True,
    )
    try:
        yield path
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        # The wrapper stays open: handlers made meanwhile (Ray's logger) may still write to it.
        sys.stderr = stream


def _fileno(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
