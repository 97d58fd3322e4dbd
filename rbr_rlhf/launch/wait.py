"""``python -m rbr_rlhf.launch.wait --url URL [--pid PID] ... --timeout S``: wait until every URL answers 200.

Used by the sbatch script between starting the services and starting the trainer. Fails at once when a
watched process (the ``srun`` of a service) has exited: a service that died during start-up is reported
in seconds, not after the timeout.
"""

from __future__ import annotations

import argparse
import sys
import time


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except (OSError, IndexError):
        return False


def wait_for(urls: list[str], pids: list[int], timeout: float, interval: float = 2.0) -> None:
    import httpx

    pending, deadline = list(urls), time.time() + timeout
    while pending:
        dead = [p for p in pids if not _alive(p)]
        if dead:
            raise RuntimeError(f"service process(es) {dead} exited before {pending} answered")
        for url in list(pending):
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    print(f"[launch] ready: {url}", flush=True)
                    pending.remove(url)
            except httpx.HTTPError:
                pass
        if pending and time.time() > deadline:
            raise TimeoutError(f"not ready after {timeout:.0f} s: {pending}")
        if pending:
            time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", action="append", default=[])
    p.add_argument("--pid", action="append", type=int, default=[])
    p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args(argv)
    try:
        wait_for(args.url, args.pid, args.timeout)
    except (RuntimeError, TimeoutError) as e:
        print(f"[launch] {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
