"""The one ``rbr-rlhf`` command.

Each area of the library registers its own subcommands (``register(subparsers)`` in its ``cli.py``);
this file only assembles them, so a newcomer finds a command's code next to the code it drives. Heavy
imports (torch, vLLM) happen inside the handlers, so ``rbr-rlhf --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

# Modules that define subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "rbr_rlhf.rules.cli",      # rules check
    "rbr_rlhf.grader.cli",     # grader eval, grader train-classifier
    "rbr_rlhf.rbr.cli",        # grade, rbr fit
    "rbr_rlhf.rm.cli",         # train-rm, eval-rm
    "rbr_rlhf.adaptive.cli",   # adaptive check/split/score/train-adapter/agreement
    "rbr_rlhf.pipeline.cli",   # build-rbr, classify-prompts
    "rbr_rlhf.rollout.cli",    # serve-rollout
    "rbr_rlhf.service.cli",    # serve-grader
    "rbr_rlhf.ppo.cli",        # train
    "rbr_rlhf.evaluation.cli", # eval
    "rbr_rlhf.launch.cli",     # launch slurm, launch local, launch prepare
    "rbr_rlhf.configref",      # config-reference
]


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def print_json(obj) -> None:
    """Commands with --json print exactly one JSON object as the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(obj, sort_keys=True, default=float), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rbr-rlhf", description="RLHF with Rule-Based Rewards.")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level (default: WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CLIError, FileNotFoundError, ValueError, KeyError) as e:
        # Expected, user-caused errors (bad rule set, missing file, unknown response type): one clear
        # message, no traceback. Anything else is a bug and keeps its traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"rbr-rlhf {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
