"""``rbr-rlhf launch slurm|local|prepare|template``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="run a recipe on a SLURM cluster or with torchrun on this machine")
    lsub = p.add_subparsers(dest="launcher", metavar="LAUNCHER")
    lsub.required = True

    s = lsub.add_parser("slurm", help="render and submit an sbatch job: services, torchrun trainers, requeue")
    s.add_argument("recipe", help="recipe YAML path, or a name in recipes/")
    s.add_argument("overrides", nargs="*", help="key=value overrides, passed to the trainer (launch.* shape the job)")
    s.add_argument("--nodes", type=int, help="nodes to allocate (default: launch.nodes)")
    s.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")
    s.add_argument("--requeue", action="store_true",
                   help="requeue after the pre-time-limit checkpoint (or a node failure); the next start adds resume=auto")
    s.add_argument("--time", help="time limit, e.g. 04:00:00 (default: launch.time)")
    s.add_argument("--partition", help="partition (default: launch.partition)")
    s.add_argument("--account", help="account (default: launch.account)")
    s.add_argument("--job-name", help="job name (default: rbr-NAME)")
    s.add_argument("--sbatch-template", metavar="PATH",
                   help="your own sbatch template (default: launch.sbatch_template, else the built-in one; "
                        "`rbr-rlhf launch template` prints it)")
    s.add_argument("--json", action="store_true", help="print {job_id, script, logs, run_dir} as the last line")
    s.set_defaults(handler=run_slurm)

    l = lsub.add_parser("local", help="torchrun --nproc_per_node N on this machine (GPUs or CPU ranks)")
    l.add_argument("recipe", help="recipe YAML path, or a name in recipes/")
    l.add_argument("overrides", nargs="*", help="key=value overrides")
    l.add_argument("--nproc", type=int, help="ranks (default: launch.nproc_per_node, else GPUs, else 1)")
    l.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    l.set_defaults(handler=run_local)

    r = lsub.add_parser("prepare", help="build the assets a recipe caches (helpful RM, classifier grader, RBR weights)")
    r.add_argument("recipe", help="recipe YAML path, or a name in recipes/")
    r.add_argument("overrides", nargs="*", help="key=value overrides")
    r.set_defaults(handler=run_prepare)

    t = lsub.add_parser("template", help="print the built-in sbatch template (copy it, edit it, point "
                        "launch.sbatch_template at the copy)")
    t.set_defaults(handler=run_template)


def run_slurm(args) -> int:
    from ..cli import print_json
    from .slurm import plan, render, submit

    ctx = plan(args.recipe, args.overrides, nodes=args.nodes, requeue=args.requeue, time=args.time,
               partition=args.partition, account=args.account, job_name=args.job_name,
               sbatch_template=args.sbatch_template)
    script = render(ctx)
    if args.dry_run:
        print(script, end="")
        return 0
    run_dir = ctx["run_dir_path"]
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)  # sbatch --output needs the directory to exist
    path = run_dir / "launch" / "job.sbatch"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    job_id = submit(path)
    print(f"submitted job {job_id}: script {path}, logs {ctx['logs']}/job-{job_id}.*.log", flush=True)
    if args.json:
        print_json({"job_id": job_id, "script": str(path), "logs": ctx["logs"], "run_dir": str(run_dir)})
    return 0


def run_template(args) -> int:
    from .slurm import TEMPLATE

    print(TEMPLATE.read_text(), end="")
    return 0


def run_local(args) -> int:
    import shlex

    from .local import command, run

    cmd, env, run_dir = command(args.recipe, args.overrides, args.nproc)
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    print(f"{shown + ' ' if shown else ''}{shlex.join(cmd)}", flush=True)
    if args.dry_run:
        return 0
    return run(cmd, env, run_dir)


def run_prepare(args) -> int:
    from ..ppo.assets import build_assets
    from ..ppo.config import load_config
    from ..rules import load_rules

    cfg = load_config(args.recipe, args.overrides)
    a = build_assets(cfg, load_rules(cfg.rbr.rules))
    print(f"[prepare] reward model {a.reward_model}; grader {a.grader}; RBR weights {a.rbr_weights}; "
          f"evaluation judge {a.judge}", flush=True)
    return 0
