"""Running the grader service: in a thread of this process (tests, single-process PPO runs) or as a child
process (``rbr-rlhf grader serve``), both on loopback by default.

Both bind port 0 unless told otherwise: the kernel picks a free port and we read it back from the bound
socket (in-process) or from the child's first line (subprocess). Picking a "free" port first and binding
it later races with every other process on the machine.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
from pathlib import Path

import httpx

from ..procs import ChildProcess

READY_LINE = re.compile(r"grader service .* on (http://\S+)")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket for uvicorn (``port`` 0: the kernel picks one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class GraderServer:
    """uvicorn in a background thread of this process::

        with GraderServer(create_app(rules, grader, weights)) as url:
            GraderClient(url).rbr_scores(items)

    Stops cleanly on exit: the batcher fails whatever is still queued with a 503, the thread is joined.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.app, self.host = app, host
        self.sock = bind_socket(host, port)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"grader-service-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the grader service did not start on {self.url}")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 30) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=timeout)
            if self.thread.is_alive():  # stuck in a long grader batch: stop waiting for connections
                self.server.force_exit = True
                self.thread.join(timeout=5)
        self.sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class GraderProcess(ChildProcess):
    """``rbr-rlhf grader serve`` as a child process, with a readiness wait and the log's tail on failure.

    ``port`` None or 0: the child binds port 0 and prints the address it got, which we read from its log.
    The token goes through the environment ($RBR_GRADER_TOKEN), not the command line, where ``ps`` shows it.
    """

    what = "the grader service"

    def __init__(self, rules: str, grader: str, weights: str | None = None, host: str = "127.0.0.1",
                 port: int | None = None, token: str | None = None, log_path: str | Path | None = None,
                 extra_args: list[str] | None = None, module: str = "rbr_rlhf.cli"):
        self.host, self.port = host, port or 0
        self.cmd = [sys.executable, "-m", module, "grader", "serve", "--rules", str(rules), "--grader", grader,
                    "--host", host, "--port", str(self.port), *(extra_args or [])]
        if weights:
            self.cmd += ["--weights", str(weights)]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"RBR_GRADER_TOKEN": token} if token else {})}
        self.log_path = Path(log_path) if log_path else None  # None: a temporary file
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the grader service has not started")
        return self._url

    def start(self, timeout: float = 300) -> "GraderProcess":
        self._spawn()

        def ready() -> bool:
            if self._url is None:
                match = READY_LINE.search(self._read_log())
                if not match:
                    return False
                self._url = match.group(1)
            try:
                return httpx.get(self._url + "/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        self._wait_ready(ready, timeout, interval=0.2)
        return self

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
