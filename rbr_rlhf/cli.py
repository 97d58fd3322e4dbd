"""The one ``rbr-rlhf`` command.

Each area of the library registers its own subcommands (``register(subparsers)`` in its ``cli.py``);
this file only assembles them, so a newcomer finds a command's code next to the code it drives. Heavy
imports (torch, vLLM) happen inside the handlers, so ``rbr-rlhf --help`` is instant.

The shape is ``rbr-rlhf GROUP VERB`` (``rm train``, ``grader serve``, ``rbr build``, ...) with four
top-level verbs for the main job: ``train``, ``sft``, ``eval`` and ``config-reference``. A package adds a verb to a
group with :func:`group`, so two packages can share one (``rbr build`` lives in ``pipeline/``). The
spellings of earlier releases (``train-rm``, ``serve-grader``, ...) are hidden aliases listed in
:data:`DEPRECATED`: they run the same command and print one line on stderr. Every parser gets
:class:`HelpFormatter`, so every command's ``--help`` shows each option's default.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys

# Modules that define subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "rbr_rlhf.rules.cli",      # rules check|new
    "rbr_rlhf.grader.cli",     # grader eval|train-classifier|train-real|unsafe-answers|cross-model
    "rbr_rlhf.service.cli",    # grader serve
    "rbr_rlhf.rbr.cli",        # rbr grade|fit|rank
    "rbr_rlhf.pipeline.cli",   # rbr build, prompts classify
    "rbr_rlhf.rm.cli",         # rm train|eval
    "rbr_rlhf.adaptive.cli",   # adaptive check|split|score|train-adapter|agreement
    "rbr_rlhf.rollout.cli",    # rollout serve
    "rbr_rlhf.ppo.cli",        # train
    "rbr_rlhf.sft.cli",        # sft
    "rbr_rlhf.experiment.cli", # experiment run|slurm|table
    "rbr_rlhf.evaluation.cli", # eval
    "rbr_rlhf.launch.cli",     # launch slurm|local|prepare|template
    "rbr_rlhf.configref",      # config-reference
]

# Commands that stand alone at the top level; every other command is GROUP VERB.
TOP_LEVEL = ("train", "sft", "eval", "config-reference")

# Old spelling -> new spelling. Kept for one release: they work and warn on stderr.
DEPRECATED = {
    "train-rm": "rm train",
    "eval-rm": "rm eval",
    "serve-grader": "grader serve",
    "serve-rollout": "rollout serve",
    "grade": "rbr grade",
    "build-rbr": "rbr build",
    "classify-prompts": "prompts classify",
}


JSON_HELP = "print the result as one JSON object, the last line of stdout"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to each option's help unless the help already says what the default is
    (``(default: launch.nodes)``) or the option is required. Positional arguments are left alone."""

    def _get_help_string(self, action):
        help = action.help or ""
        if action.required or not action.option_strings or re.search(r"\(default|default[:)]", help):
            return help
        return super()._get_help_string(action)


def print_json(obj) -> None:
    """Commands with --json print exactly one JSON object as the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(obj, sort_keys=True, default=float), flush=True)


def group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """The verbs of ``rbr-rlhf NAME``: created by the first package that asks, shared by the next ones."""
    parser = sub.choices.get(name)
    if parser is None:
        parser = sub.add_parser(name, help=help)
        parser.verbs = parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
        parser.verbs.required = True
    return parser.verbs


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) of every command below ``parser``, groups and leaves, aliases skipped."""
    sub = subcommands(parser)
    if sub is None:
        return
    listed = {a.dest for a in sub._choices_actions}  # commands shown in --help (aliases are not)
    for name, child in sub.choices.items():
        if name in listed:
            yield (*path, name), child
            yield from walk(child, (*path, name))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rbr-rlhf", description="RLHF with Rule-Based Rewards.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--log-level", default="WARNING", help="Python logging level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for path, child in walk(parser):
        child.formatter_class = HelpFormatter
        if subcommands(child) is None:
            child.set_defaults(command_path=" ".join(path))
            for action in child._actions:  # an option without help would show no default: give it one
                if action.option_strings and action.help is None:
                    action.help = JSON_HELP if action.dest == "json" else "(default: %(default)s)"
    for old, new in DEPRECATED.items():  # hidden: no help entry, so --help does not list them
        group_name, verb = new.split()
        sub.choices[old] = sub.choices[group_name].verbs.choices[verb]
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in DEPRECATED:
        print(f"rbr-rlhf {args.command} is deprecated; use rbr-rlhf {DEPRECATED[args.command]}", file=sys.stderr)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, KeyError) as e:
        # Expected, user-caused errors (bad rule set, missing file, unknown response type): one clear
        # message, no traceback. Anything else is a bug and keeps its traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"rbr-rlhf {args.command_path}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
