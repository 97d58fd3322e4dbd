"""``rbr-rlhf train RECIPE [key=value ...]`` (``rbr-rlhf eval`` lives in ``rbr_rlhf/evaluation/cli.py``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="RBR-PPO: run a recipe (OmegaConf YAML) with key=value overrides")
    t.add_argument("recipe", help="recipe YAML path, or a name in recipes/ (e.g. smollm2-135m-cpu)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. total_steps=4 resume=auto")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.set_defaults(handler=run_train)


def run_train(args) -> int:
    from .config import load_config, to_yaml

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be key=value, got {bad}")
    cfg = load_config(args.recipe, args.overrides)
    print(to_yaml(cfg), flush=True)
    if args.print_config:
        return 0
    from pathlib import Path

    from .run import train
    from .rundir import check_run_dir

    try:  # an unwritable or full run directory: one clear error (exit 2) before any model is loaded
        check_run_dir(Path(cfg.run_dir))
    except RuntimeError as e:
        raise ValueError(str(e)) from None  # the CLI prints ValueErrors as one line, exit status 2

    from .preflight import run_preflight

    run_preflight(cfg)  # the rule set, grader, weights and every row file checked before any model loads
    train(cfg)
    return 0
