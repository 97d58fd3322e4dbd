"""A real one-node SLURM cluster on this machine, for the launch tests.

Debian's ``slurmctld``, ``slurmd`` and ``munge`` (``apt-get install slurmd slurmctld slurm-client munge``;
``.ci/run`` installs them) run without systemd, as root, with everything private to one directory: their
own munge key and socket, a ``slurm.conf`` on free ports (clients find it through ``SLURM_CONF``), state and
spool directories, logs. Nothing under ``/etc`` is touched and a cluster already on the machine is left alone.

    with OneNodeCluster(workdir) as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env)
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "scancel")


def why_unavailable() -> str | None:
    """None when this machine can run the cluster, else the reason (for a skip message)."""
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return (f"SLURM is not installed (missing {', '.join(missing)}): "
                "apt-get install slurmd slurmctld slurm-client munge (.ci/run does this where apt is available)")
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd/munged needs root (SlurmUser=root, munged as user munge)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "the munge user does not exist (the munge package creates it)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _real_memory_mib() -> int:
    with open("/proc/meminfo") as fh:
        kib = int(re.search(r"MemTotal:\s+(\d+)", fh.read()).group(1))
    return max(1000, int(kib / 1024 * 0.85))  # slurmd refuses a node that reports less than configured


class OneNodeCluster:
    def __init__(self):
        # munged (user munge) must reach and trust every directory on its paths: a fresh 0755 directory
        # under /tmp, not pytest's 0700 tmp tree. Removed again by stop().
        self.root = Path(tempfile.mkdtemp(prefix="rbr-slurm-"))
        self.root.chmod(0o755)
        self.host = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

    # ------------------------------------------------------------------ munge
    def _start_munge(self) -> None:
        m = self.root / "munge"
        m.mkdir()
        m.chmod(0o755)  # the socket needs execute for all; nothing writable by others
        key = m / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        pw = pwd.getpwnam("munge")
        for p in (m, key):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        self.munge_socket = m / "munge.socket"
        cmd = [_sbin("munged"), "--foreground", f"--key-file={key}", f"--socket={self.munge_socket}",
               f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}",
               "--num-threads=2"]
        # munged refuses to run as root: drop to the munge user for it alone.
        self.procs.append(subprocess.Popen(cmd, user="munge", group="munge", stdout=open(self.root / "munged.out", "w"),
                                           stderr=subprocess.STDOUT, start_new_session=True))
        self._wait(lambda: self.munge_socket.exists(), 30, "munged", self.root / "munged.out", m / "munged.log")

    # ------------------------------------------------------------------ slurm
    def _write_conf(self) -> None:
        (self.root / "state").mkdir()
        (self.root / "spool").mkdir()
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        cpus = os.cpu_count() or 1
        conf = f"""\
ClusterName=rbrtest
SlurmctldHost={self.host}
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.root / 'slurmctld.pid'}
SlurmdPidFile={self.root / 'slurmd.pid'}
SlurmctldLogFile={self.root / 'slurmctld.log'}
SlurmdLogFile={self.root / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
MinJobAge=3600
KillWait=30
SlurmctldTimeout=60
SlurmdTimeout=60
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_real_memory_mib()} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""
        (self.root / "slurm.conf").write_text(conf)

    def start(self) -> "OneNodeCluster":
        try:
            self._start_munge()
            self._write_conf()
            for name, args in (("slurmctld", ["-D", "-i"]), ("slurmd", ["-D", "-N", self.host])):
                self.procs.append(subprocess.Popen([_sbin(name), *args, "-f", str(self.root / "slurm.conf")], env=self.env,
                                                   stdout=open(self.root / f"{name}.out", "w"), stderr=subprocess.STDOUT,
                                                   start_new_session=True))
            self._wait(self._node_idle, 90, "slurmd/slurmctld", self.root / "slurmctld.log", self.root / "slurmd.log",
                       self.root / "slurmd.out")
        except BaseException:
            self.stop()
            raise
        return self

    def _node_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip().startswith("idle")

    def _wait(self, ready, timeout: float, what: str, *logs: Path) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():
                return
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                break
            time.sleep(0.5)
        tails = "\n".join(f"--- {p}:\n{p.read_text(errors='replace')[-1500:]}" for p in logs if p.exists())
        raise RuntimeError(f"{what} did not come up within {timeout:.0f} s\n{tails}")

    # ------------------------------------------------------------------ jobs
    def job(self, job_id: str) -> dict:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...)."""
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=self.env, capture_output=True, text=True)
        fields = {}
        for tok in out.stdout.split():
            k, _, v = tok.partition("=")
            fields.setdefault(k, v)
        return fields

    def wait_job(self, job_id: str, timeout: float, until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                                             "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED")) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in until:
                return info
            time.sleep(2)
        raise TimeoutError(f"job {job_id} not finished after {timeout:.0f} s: {self.job(job_id)}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "OneNodeCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
