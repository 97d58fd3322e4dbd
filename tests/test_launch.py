"""``rbr-rlhf launch``: the rendered sbatch script (roles, nodes, signal, requeue), the local launcher, and a
real one-node SLURM cluster (slurmctld, slurmd, munge on this machine) running the CPU recipe through the
launcher, stopped by SIGUSR1 before its "time limit", requeued, and resumed to the end."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import free_port
from ppo_assets import REPO, metrics, run_args
from rbr_rlhf.cli import main


def dry_run(capsys, *args) -> str:
    assert main(["launch", "slurm", *args, "--dry-run"]) == 0
    return capsys.readouterr().out


def test_dry_run_one_node_with_requeue(capsys, tmp_path):
    script = dry_run(capsys, "smollm2-135m-cpu", "total_steps=1", "rollout.engine=transformers",
                     f"run_dir={tmp_path / 'run'}", "--nodes", "1", "--requeue", "--time", "00:30:00")
    assert "#SBATCH --nodes=1\n" in script and "#SBATCH --time=00:30:00\n" in script
    assert "#SBATCH --signal=B:USR1@120\n" in script and "#SBATCH --requeue\n" in script
    assert 'if [ "$RESTARTS" -gt 0 ]; then RESUME="resume=auto"; fi' in script
    assert "trap on_usr1 USR1" in script and 'touch "$STOP_FILE"' in script and 'scontrol requeue "$SLURM_JOB_ID"' in script
    # transformers rollouts: no rollout server; the grader service on loopback, its URL given to the trainer
    assert "rbr_rlhf.cli rollout serve" not in script and "rollout.url" not in script
    assert "rbr_rlhf.cli grader serve --rules default --grader classifier:.cache/grader-minilm-real" in script
    assert "--host 127.0.0.1 --port 8700" in script and '"rbr.service_url=$GRADER_URL"' in script
    assert "--standalone --nnodes=1 --nproc_per_node=1 -m rbr_rlhf.cli train" in script
    assert f"run_dir={tmp_path / 'run'}" in script and f"--output={tmp_path / 'run'}/logs/job-%j.batch.log" in script
    for role in ("prepare", "grader", "trainer-%N"):
        assert f'--output="$LOGS/job-%j.{role}.log"' in script
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_dry_run_multi_node_roles_from_config(capsys):
    script = dry_run(capsys, "llama3-8b-gpu", "launch.service_nodes=1", "launch.gpus_per_node=8",
                     "launch.rollout_gpus=0,1", "launch.env.NCCL_IB_DISABLE=1", "launch.master_port=29999",
                     "--nodes", "3", "--partition", "gpu")
    assert "#SBATCH --nodes=3\n" in script and "#SBATCH --gpus-per-node=8\n" in script and "#SBATCH --partition=gpu\n" in script
    assert "#SBATCH --no-requeue\n" in script and "resume=auto" not in script
    assert "export NCCL_IB_DISABLE=1\n" in script and "export MASTER_PORT=29999" in script
    assert 'TRAIN_NODES=("${NODES[@]:1}")' in script and 'SERVICE_HOST="$SERVICE_NODE"' in script
    assert "CUDA_VISIBLE_DEVICES=0,1 srun" in script and "rbr_rlhf.cli rollout serve --model" in script
    assert "--nnodes=2 --nproc_per_node=8 --node_rank=$NODE_RANK --master_addr=$MASTER_ADDR" in script
    assert '"rollout.url=$ROLLOUT_URL"' in script and '--host "$SERVICE_NODE"' in script
    assert 'export RBR_GRADER_TOKEN="${RBR_GRADER_TOKEN:-' in script
    if "rbr_rlhf.cli grader serve" not in script:  # the GPU recipe names an external grader endpoint
        assert "rbr.service_url" not in script


def test_launch_errors_are_clear(capsys):
    assert main(["launch", "slurm", "smollm2-135m-cpu", "launch.nodez=2", "--dry-run"]) == 2
    assert "launch.nodez" in capsys.readouterr().err
    assert main(["launch", "slurm", "smollm2-135m-cpu", "launch.service_nodes=1", "--nodes", "1", "--dry-run"]) == 2
    assert "leaves no training node" in capsys.readouterr().err


def test_the_editable_template_is_the_built_in_one(capsys):
    """launch/slurm.sbatch.j2 (what cluster users copy) is the package's template, which ships as package
    data so an installed rbr-rlhf finds it without a checkout; `launch template` prints it."""
    from importlib import resources

    built_in = resources.files("rbr_rlhf.launch").joinpath("slurm.sbatch.j2").read_text()
    assert (REPO / "launch" / "slurm.sbatch.j2").read_text() == built_in, \
        "launch/slurm.sbatch.j2 and rbr_rlhf/launch/slurm.sbatch.j2 differ: edit both (cp one over the other)"
    assert '"launch/*.j2"' in (REPO / "pyproject.toml").read_text()
    assert main(["launch", "template"]) == 0
    assert capsys.readouterr().out == built_in


def test_sbatch_template_override(capsys, tmp_path):
    """launch.sbatch_template in the recipe, or --sbatch-template (which wins), replaces the built-in
    template; a missing file is a clear error."""
    mine = tmp_path / "mine.sbatch.j2"
    mine.write_text("#!/bin/bash\n#SBATCH --nodes={{ nodes }}\n#SBATCH --qos=mine\n{{ train_cmd_q }}\n")
    cli_one = tmp_path / "cli.sbatch.j2"
    cli_one.write_text("#!/bin/bash\n# from the command line: {{ job_name }}\n")
    common = ["smollm2-135m-cpu", "rollout.engine=transformers", f"run_dir={tmp_path / 'run'}"]
    script = dry_run(capsys, *common, f"launch.sbatch_template={mine}", "--nodes", "2")
    assert script.startswith("#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --qos=mine\n") and "rbr_rlhf.cli train" in script
    script = dry_run(capsys, *common, f"launch.sbatch_template={mine}", "--sbatch-template", str(cli_one))
    assert script.startswith("#!/bin/bash\n# from the command line: rbr-")
    assert "--qos=mine" not in script
    assert main(["launch", "slurm", *common, f"launch.sbatch_template={tmp_path / 'nope.j2'}", "--dry-run"]) == 2
    assert "nope.j2 does not exist" in capsys.readouterr().err


def test_example_launch_scripts():
    """launch/examples/*.sh: valid bash, and every rbr-rlhf command in them is a command of the CLI."""
    import re

    from rbr_rlhf.cli import build_parser, subcommands

    top = subcommands(build_parser())
    scripts = sorted((REPO / "launch" / "examples").glob("*.sh"))
    assert {p.name for p in scripts} == {"slurm-multinode.sh", "torchrun-multinode.sh"}
    for path in scripts:
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, path
        text = path.read_text()
        used = re.findall(r"-m rbr_rlhf\.cli ([a-z-]+)(?: ([a-z-]+))?", text)
        assert {u[0] for u in used} >= {"launch", "rollout", "grader", "train"}, path
        for group, verb in used:
            sub = subcommands(top.choices[group])
            assert sub is None or verb in sub.choices, f"{path.name}: rbr-rlhf {group} {verb}"
        assert "--nnodes=2" in text and "rollout.url=$ROLLOUT_URL rbr.service_url=$GRADER_URL" in text


def test_launch_local_dry_run(capsys, tmp_path):
    assert main(["launch", "local", "smollm2-135m-cpu", "total_steps=2", f"run_dir={tmp_path}", "--nproc", "2",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out.strip()
    assert "-m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=2 -m rbr_rlhf.cli train smollm2-135m-cpu" in out
    assert out.endswith(f"total_steps=2 run_dir={tmp_path}")


# ------------------------------------------------------------------------------ a real SLURM cluster
@pytest.fixture(scope="module")
def slurm_cluster():
    from slurm_cluster import OneNodeCluster, why_unavailable

    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    with OneNodeCluster() as cluster:
        yield cluster


@pytest.mark.slow
def test_slurm_job_stops_on_usr1_requeues_and_resumes(slurm_cluster, tiny_assets, tmp_path):
    """``rbr-rlhf launch slurm`` on a real one-node cluster: the grader service and the trainer run as srun
    steps; SIGUSR1 to the batch script (what ``--signal=B:USR1@120`` sends before the time limit) makes the
    trainer checkpoint after its step and stop; the job requeues itself and resumes to the last step."""
    c = slurm_cluster
    run = tmp_path / "run"
    args = run_args(tiny_assets, run, "total_steps=2", "checkpoint.every=2", f"launch.grader_port={free_port()}")
    out = subprocess.run([sys.executable, "-m", "rbr_rlhf.cli", "launch", "slurm", *args, "--nodes", "1", "--requeue",
                          "--json"], cwd=REPO, env=c.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    job = json.loads(out.stdout.strip().splitlines()[-1])["job_id"]
    logs = run / "logs"
    trainer_log = logs / f"job-{job}.trainer-{c.host}.log"

    def tails() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(logs.glob("*.log")))

    deadline = time.time() + 900
    while not (trainer_log.exists() and "resolved config saved" in trainer_log.read_text()):
        state = c.job(job).get("JobState")
        assert state in ("PENDING", "RUNNING") and time.time() < deadline, (state, tails())
        time.sleep(1)
    # The trainer is set up and in its first step: the "time limit is near" signal.
    assert subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=c.env).returncode == 0

    deadline = time.time() + 1500
    released = False
    while True:
        info = c.job(job)
        if info.get("JobState") not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING"):
            break
        if info.get("JobState") == "PENDING" and info.get("Restarts") == "1" and not released:
            # SLURM holds a requeued job for a couple of minutes (its BeginTime); start it now.
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=c.env)
            released = True
        assert time.time() < deadline, tails()
        time.sleep(2)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["Restarts"] == "1", (info, tails())

    batch, trainer = (logs / f"job-{job}.batch.log").read_text(), trainer_log.read_text()
    assert "SIGUSR1" in batch and "requeueing job" in batch and "restart count 1" in batch
    assert "stopped on request" in trainer and "after step 1" in trainer
    assert "resumed from" in trainer and "checkpoints/step-1" in trainer
    m = metrics(run)
    assert sorted(m) == [1, 2] and m[2]["weight_version"] == 2
    for step in (1, 2):
        assert (run / "checkpoints" / f"step-{step}" / "COMPLETE").exists()
    assert (run / "summary.json").exists() and not (run / "STOP").exists()
    assert (logs / f"job-{job}.grader.log").read_text().count("grader service for rule set") == 2


def test_stop_request_signal_and_file(tmp_path):
    """The trainer's "checkpoint at the end of this step and stop" flag: SIGUSR1/SIGTERM or RUN_DIR/STOP;
    handlers only while installed, the previous ones restored after."""
    import signal

    from rbr_rlhf.ppo.rundir import StopRequest

    before = signal.getsignal(signal.SIGUSR1)
    stop = StopRequest(tmp_path).install()
    try:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.1)
        assert stop.requested() and stop.signum == signal.SIGUSR1
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == before
    stop = StopRequest(tmp_path)
    (tmp_path / "STOP").touch()
    assert stop.requested()
    stop.acknowledge(rank=0)
    assert not (tmp_path / "STOP").exists() and not stop.requested()
