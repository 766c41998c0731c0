"""Running edgetwin's own command (`python -m edgetwin ...`) as a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO


def start_edgetwin(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_file: IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `edgetwin ARGS...` with this interpreter, exactly as systemd or a user would.

    `env` adds to (and overrides) this process's environment. stdout and stderr are pipes,
    which `stop_process` collects, unless `log_file` takes both: give one to a process that
    runs long, since a full pipe would block it. The child runs the caller's edgetwin.
    """
    return subprocess.Popen(  # noqa: S603 - our own command, with the caller's arguments
        [sys.executable, "-m", "edgetwin", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE if log_file is None else log_file,
        stderr=subprocess.PIPE if log_file is None else log_file,
    )


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15
) -> tuple[int, str]:
    """Send `sig` (unless the process has already exited), wait for the exit, and return
    (exit code, stderr text).

    A process still running after `timeout` seconds is killed and AssertionError is raised with
    its stderr: a program that ignores SIGTERM is a bug the caller should see.
    """
    if process.poll() is None:
        process.send_signal(sig)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        stderr = stderr or b""
        raise AssertionError(
            f"process did not stop within {timeout} s; stderr:\n{stderr.decode()}"
        ) from None
    return process.returncode, (stderr or b"").decode()
