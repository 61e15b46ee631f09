"""Decoding in a killable child process, so a hung or crashing decoder costs one video, not the job.

decord can hang inside native code while holding the GIL; no thread of the hung process can
then interrupt it. Each decode actor therefore keeps one long-lived child process (started once,
reused for every segment; a probe task starts one per block) and waits for its output with a
deadline. When the deadline passes the actor SIGKILLs the child, starts a fresh one and reports
the segment as ``timeout``; when the child dies (a segfault in native code) the segment is
reported as ``WorkerCrash``.

The child is forked from the actor where the platform can (Linux): it starts in milliseconds
with the actor's modules already imported, where a spawned child started a fresh interpreter
and imported the decoder's modules again (about a second of CPU per actor, on the path to a
job's first clip). The child never calls into Ray, so the actor's Ray threads, which a fork
does not copy, are not missed; it talks to its parent over a pipe only, and closes every other
descriptor it inherited first: a copy of the actor's sockets to Ray kept a SIGKILLed actor
looking alive to its raylet (the job waited on it forever), and a copy of the parent's end of
the pipe kept the orphaned child from ever seeing the parent go.

Fault injection for tests: with ``VMB_FAULT_HANG_MARKER`` set in the environment, the child
blocks in native code, holding the GIL, on any video whose URI contains that marker.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Iterator

from pipeline import errors

_DONE = "__done__"
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
HANG_MARKER_ENV = "VMB_FAULT_HANG_MARKER"


def maybe_inject_hang(video_uri: str) -> None:
    marker = os.environ.get(HANG_MARKER_ENV)
    if marker and marker in video_uri:
        import ctypes

        ctypes.PyDLL(None).sleep(3600)  # native call that keeps the GIL, like a hung decoder


def _close_inherited_fds(keep: int) -> None:
    """Close every descriptor above stderr but ``keep`` (after a fork: see the module docstring)."""
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


def _child_loop(conn, produce: Callable[..., Iterator[dict]]) -> None:
    """Serve requests ``(request_id, args)``; every reply is tagged with its request id, so the
    parent can drop what belongs to a request it stopped reading."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if START_METHOD == "fork":
        _close_inherited_fds(keep=conn.fileno())
    while True:
        try:
            request_id, args = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        try:
            for row in produce(*args):
                conn.send((request_id, row))
        finally:
            conn.send((request_id, _DONE))


class IsolatedDecoder:
    """Runs ``produce(*args)`` (a row generator) in a child process with a deadline per call."""

    def __init__(self, produce: Callable[..., Iterator[dict]]):
        self._produce = produce
        self._ctx = mp.get_context(START_METHOD)
        self._proc = None
        self._conn = None
        self._request_id = 0
        self.restarts = 0

    def start(self) -> None:
        """Start the child now (a spawned one imports its modules while the caller does other
        work); ``run`` starts it otherwise."""
        parent, child = self._ctx.Pipe(duplex=True)
        self._proc = self._ctx.Process(target=_child_loop, args=(child, self._produce), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None
        self.restarts += 1

    def run(self, args: tuple, timeout_s: float) -> Iterator[dict]:
        """Yield the child's rows; raise DecodeTimeoutError / WorkerCrashError on hang / crash.

        ``timeout_s`` bounds the time spent waiting for the child, not the time the caller holds
        this generator suspended: downstream backpressure pauses a long segment's decode for as
        long as the models need to catch up, and that is not a hang.
        """
        if self._proc is None or not self._proc.is_alive():
            self.start()
        self._request_id += 1
        request_id = self._request_id
        self._conn.send((request_id, args))
        remaining = timeout_s  # of waiting for the child; time suspended at `yield` is not counted
        while True:
            waited_from = time.monotonic()
            if remaining <= 0 or not self._conn.poll(remaining):
                self._kill()
                raise errors.DecodeTimeoutError(f"decode did not finish within {timeout_s:g} s")
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                code = self._proc.exitcode if self._proc else None
                self._kill()
                raise errors.WorkerCrashError(f"decoder process died (exit code {code})") from None
            remaining -= time.monotonic() - waited_from
            tag, payload = msg
            if tag != request_id:
                continue  # left over from a request whose reader stopped early
            if isinstance(payload, str) and payload == _DONE:
                return
            yield payload

    def close(self) -> None:
        self._kill()

    def __del__(self) -> None:
        try:
            if self._proc is not None and self._proc.is_alive():
                self._proc.kill()
        except (OSError, AttributeError, ValueError):
            pass
