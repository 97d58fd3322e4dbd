"""``rbr-rlhf experiment run|slurm|table``: Helpful-PPO vs Human-PPO vs RBR-PPO from one start."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import group

    ex = group(sub, "experiment", help="PPO arms from one SFT start, judged side by side (docs/experiment.md)")
    r = ex.add_parser("run", help="build the shared start and assets, train every arm, write the table (resumable)")
    r.add_argument("experiment", help="experiment YAML path, or a name in experiments/ (e.g. smollm2-135m-cpu)")
    r.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.total_steps=4 sft.max_steps=10")
    r.add_argument("--stage", choices=("all", "prepare", "arms", "table"), default="all",
                   help="run one stage only (the SLURM jobs do)")
    r.add_argument("--arm", help="train only this arm (with --stage arms or all)")
    r.add_argument("--print-config", action="store_true", help="print each arm's resolved recipe and exit")
    r.set_defaults(handler=run_run)

    s = ex.add_parser("slurm", help="submit the experiment as SLURM jobs: prepare, one job per arm, the table")
    s.add_argument("experiment", help="experiment YAML path, or a name in experiments/")
    s.add_argument("overrides", nargs="*", help="key=value overrides (train.launch.* shape the jobs)")
    s.add_argument("--dry-run", action="store_true", help="print the job scripts, submit nothing")
    s.add_argument("--time", help="time limit of each job (default: train.launch.time)")
    s.add_argument("--partition", help="partition (default: train.launch.partition)")
    s.add_argument("--account", help="account (default: train.launch.account)")
    s.set_defaults(handler=run_slurm)

    t = ex.add_parser("table", help="the table and plot of whatever arms have finished")
    t.add_argument("experiment", help="experiment YAML path, or a name in experiments/")
    t.add_argument("overrides", nargs="*", help="key=value overrides")
    t.add_argument("--json", action="store_true")
    t.set_defaults(handler=run_table)


def run_run(args) -> int:
    from .config import load_experiment
    from .run import run_experiment, write_arm_recipes

    cfg = load_experiment(args.experiment, args.overrides)
    if args.arm and args.arm not in cfg.arms:
        raise ValueError(f"--arm {args.arm!r}: the arms are {list(cfg.arms)}")
    if args.print_config:
        for arm, path in write_arm_recipes(cfg).items():
            print(f"# ---- {arm}: {path}\n{path.read_text()}")
        return 0
    run_experiment(cfg, args.stage, only=args.arm)
    return 0


def run_slurm(args) -> int:
    from .config import load_experiment
    from .slurm import plan_jobs, submit_jobs

    cfg = load_experiment(args.experiment, args.overrides)
    jobs = plan_jobs(cfg, args.experiment, args.overrides, time=args.time, partition=args.partition,
                     account=args.account)
    if args.dry_run:
        for job in jobs:
            after = f" (after {', '.join(job['after'])})" if job["after"] else ""
            print(f"# ======== job {job['name']}{after}\n{job['script']}", end="")
        return 0
    submit_jobs(cfg, jobs)
    return 0


def run_table(args) -> int:
    from ..cli import print_json
    from .config import load_experiment
    from .table import write_table

    table = write_table(load_experiment(args.experiment, args.overrides))
    if args.json:
        print_json(table)
    return 0
