"""Child processes: servers the trainer starts, stops, and that die with it.

The trainer starts the rollout server and the grader service as children in their own sessions (so that
stopping one signals its whole process group). A ``kill -9`` of the trainer runs none of its cleanup,
and the children would live on, holding ports and memory. On Linux the kernel can deliver a signal to a
child when its parent dies (``PR_SET_PDEATHSIG``), which covers that case too; elsewhere this is a no-op
and the normal ``stop()`` paths remain the only cleanup.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: SIGTERM this child when the process that started it dies.

    The signal fires when the *thread* that forked exits, so start children from a long-lived thread (our
    launchers are called from the main thread).
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:  # no glibc (e.g. musl): fall back to the normal stop() paths
            pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on ``host`` (for a child server, a rendezvous, or a test that
    needs a port nobody listens on)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ChildProcess:
    """A long-running child (a server) in its own session, logging to a file.

    What the rollout server and the grader service share: start it, wait until a probe says it is ready
    (reporting the tail of its own log if it exits or times out first), and stop it with SIGTERM to the
    whole process group, then SIGKILL if it does not go. Subclasses set ``cmd``, ``env`` and
    ``log_path``, and say what "ready" means.
    """

    what = "child process"  # for error messages: "the grader service", "the vLLM server"
    error = RuntimeError  # the exception start() raises

    cmd: list[str]
    env: dict[str, str]
    log_path: "Path | None" = None
    proc: "subprocess.Popen | None" = None
    _log = None

    def _spawn(self) -> None:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="rbr-child-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        # Own session: stop() signals the whole group (vLLM spawns engine and worker processes).
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)

    def _wait_ready(self, ready: Callable[[], bool], timeout: float, interval: float) -> None:
        """Poll ``ready()`` until it is true; raise ``self.error`` with the log's tail if the child exits
        or ``timeout`` seconds pass first (the child is stopped then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, tail = self.proc.returncode, self.log_tail()
                self.stop()
                raise self.error(f"{self.what} exited with status {code} during start-up; "
                                 f"its log ({self.log_path}) ends with:\n{tail}")
            if ready():
                return
            time.sleep(interval)
        tail = self.log_tail()
        self.stop()
        raise self.error(f"{self.what} was not ready after {timeout:.0f} s; its log ({self.log_path}) ends with:\n{tail}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return "".join(deque(fh, maxlen=lines))
        except (OSError, TypeError):
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)  # uvicorn and vLLM shut down gracefully on SIGTERM
                    self.proc.wait(timeout=timeout)
                except ProcessLookupError:
                    pass
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    self.proc.wait(timeout=10)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
