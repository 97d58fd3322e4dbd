"""Child processes that die with their parent.

The trainer starts the rollout server and the grader service as children in their own sessions (so that
stopping one signals its whole process group). A ``kill -9`` of the trainer runs none of its cleanup,
and the children would live on, holding ports and memory. On Linux the kernel can deliver a signal to a
child when its parent dies (``PR_SET_PDEATHSIG``), which covers that case too; elsewhere this is a no-op
and the normal ``stop()`` paths remain the only cleanup.
"""

from __future__ import annotations

import ctypes
import signal
import sys

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
