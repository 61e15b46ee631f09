"""Ports for the Ray instances and servers the tests start on this machine."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def own_dashboard_agent_port() -> Iterator[int]:
    """Ray instances started inside the block give their dashboard agent a free port.

    ``ray.init`` has no argument for it, so every local instance's agent takes the fixed port
    52365. A second instance on the machine -- each ``vmb run`` subprocess, cluster and bench
    run while the session's instance is up -- then waits for its agent to give up on that port
    after six binds with back-off, and its raylet waits for the agent: about 3.5 s more per Ray
    start (6.5 s against 2.5-3.5 s for ``ray_start_s`` of a ``vmb run``, measured here). The
    session's instance takes another port instead (``RayParams``' default, for the block only).
    """
    from ray._private.parameter import RayParams

    port = free_port()
    original = RayParams.__init__

    def init(self, *args, **kwargs):
        kwargs.setdefault("dashboard_agent_listen_port", port)
        original(self, *args, **kwargs)

    RayParams.__init__ = init
    try:
        yield port
    finally:
        RayParams.__init__ = original
