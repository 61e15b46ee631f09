"""Helpers shared by the tests that run the ``vmb`` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VMB = str(Path(sys.executable).with_name("vmb"))


def env_without_ray(home: Path | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without any Ray address or auth setting (and with ``HOME``
    set to ``home`` when given, so no ``~/.ray/auth_token`` applies), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_AUTH_", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"))
    }
    if home is not None:
        env["HOME"] = str(home)
    return env | extra


def vmb_subprocess(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run ``vmb ARGS`` from the repository root; text output captured."""
    return subprocess.run(
        [VMB, *args],
        cwd=REPO,
        env=env if env is not None else env_without_ray(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def set_args(overrides: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` → ``["--set", "a=1", "--set", "b=2"]``."""
    return [x for o in overrides for x in ("--set", o)]
