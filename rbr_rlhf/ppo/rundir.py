"""The run directory: checked before anything loads, a stop request honoured between steps, where the
run's time went, the summary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path


def check_run_dir(run_dir: Path, min_free_gib: float = 2.0) -> None:
    """Fail before any training if the run directory is unwritable or the disk is (nearly) full."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # A probe file of this process's own: every rank checks the same directory at once.
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-probe-") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as e:
        raise RuntimeError(f"run directory {run_dir} is not writable: {e}") from None
    free = shutil.disk_usage(run_dir).free / 2 ** 30
    if free < min_free_gib:
        raise RuntimeError(f"only {free:.1f} GiB free under {run_dir}; checkpoints need at least {min_free_gib} GiB")


class StopRequest:
    """"Checkpoint at the end of this step and exit", asked for by a signal or a file.

    SLURM sends SIGTERM at the time limit or on preemption (and SIGUSR1 when the job asks for it with
    ``--signal``); the sbatch script of ``rbr-rlhf launch slurm`` turns its own early SIGUSR1 into a file
    named ``STOP`` in the run directory, which reaches every launcher (torchrun would not forward SIGUSR1).
    The handler only sets a flag: the step in flight finishes, a checkpoint is written, the run returns,
    and ``resume=auto`` continues from there. A second signal stops at once (the default action).
    Installed only around the training loop, so asset building and evaluation keep the default handlers.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self, run_dir: Path):
        self.file = Path(run_dir) / "STOP"
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            self.uninstall()
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        print(f"[run] {signal.Signals(signum).name}: writing a checkpoint at the end of this step, then stopping "
              "(send it again to stop at once)", flush=True)

    def requested(self) -> bool:
        return self.signum is not None or self.file.exists()

    def acknowledge(self, rank: int) -> None:
        if rank == 0:
            self.file.unlink(missing_ok=True)

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


class PhaseClock:
    """Wall seconds per phase of a run (assets, evaluation, training, ...), printed as each phase ends and
    kept in summary.json (``seconds``): where a run's time went, without a profiler. A phase entered again
    (``train``, once a step) adds up; ``echo=False`` keeps it off the console."""

    def __init__(self, quiet: bool = False):
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()
        self.quiet = quiet

    @contextmanager
    def __call__(self, phase: str, echo: bool = True):
        start = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - start
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + took, 1)
            if echo and not self.quiet:
                print(f"[time] {phase}: {took:.0f} s", flush=True)

    def summary(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self.started, 1)}


def write_summary(run_dir: Path, summary: dict) -> Path:
    path = Path(run_dir) / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=float))
    return path
