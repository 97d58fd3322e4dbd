"""Running the grader service: in a thread of this process (tests, single-process runs) or as a
child process (``rbr-rlhf serve-grader``), both on loopback by default."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class GraderServer:
    """uvicorn in a background thread; ``with GraderServer(app) as url: ...``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("grader service did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class GraderProcess:
    """``rbr-rlhf serve-grader`` as a child process, with readiness wait and log tail on failure."""

    def __init__(self, rules: str, grader: str, weights: str | None = None, host: str = "127.0.0.1",
                 port: int | None = None, token: str | None = None, log_path: str | Path | None = None,
                 extra_args: list[str] | None = None):
        self.host, self.port = host, port or free_port(host)
        self.cmd = [sys.executable, "-m", "rbr_rlhf.cli", "serve-grader", "--rules", rules, "--grader", grader,
                    "--host", host, "--port", str(self.port), *(extra_args or [])]
        if weights:
            self.cmd += ["--weights", weights]
        self.env = {**os.environ, **({"RBR_GRADER_TOKEN": token} if token else {})}
        self.log_path = Path(log_path or f"/tmp/rbr-grader-{self.port}.log")
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 300) -> "GraderProcess":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"grader service exited with status {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"grader service not ready after {timeout:.0f} s; log:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return "".join(deque(fh, maxlen=lines))
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()
        self.proc = None

    def __enter__(self) -> "GraderProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
