"""Check a documented ``rbr-rlhf ...`` command against the real CLI: the argparse parser accepts it, and for
``train``/``launch`` the recipe exists and every ``key=value`` override is a schema key of the right type
(``load_config``; for ``experiment``, ``load_experiment``). Synopsis notation is read the way a person reads it: ``[--json]`` is included, ``a|b``
takes ``a``, ``...`` and the placeholder ``key=value`` are dropped, ``RECIPE`` and ``EXPERIMENT`` are the CPU ones, ``N`` is 2."""

from __future__ import annotations

import contextlib
import io
import re
import shlex

from rbr_rlhf.cli import DEPRECATED, build_parser


def normalize(tokens: list[str]) -> list[str]:
    out = []
    for tok in tokens:
        tok = tok.strip("[]")
        if not tok or tok in ("...", "key=value"):
            continue
        if "|" in tok and "=" not in tok and not tok.startswith("--"):
            tok = tok.split("|")[0]
        out.append({"RECIPE": "smollm2-135m-cpu", "EXPERIMENT": "smollm2-135m-cpu", "N": "2"}.get(tok, tok))  # placeholders
    return out


def commands_in(text: str) -> list[str]:
    """``rbr-rlhf`` commands in shell lines (continuations joined; ``&&``, ``;`` and pipes split; comments cut)."""
    text = re.sub(r"\s*\\\n\s*", " ", text)
    found = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)
        for part in re.split(r"&&|;|\s\|\s|\$\(|\)", line):
            m = re.search(r"(?:^|\s|/)rbr-rlhf\s+(.*)$", part)
            if m:
                found.append("rbr-rlhf " + m.group(1).strip())
    return found


def check(command: str) -> None:
    """Raises AssertionError naming the command and what is wrong with it."""
    argv = normalize(shlex.split(command)[1:])
    if argv and argv[0] in DEPRECATED:
        raise AssertionError(f"{command!r}: `{argv[0]}` is an old spelling: write `rbr-rlhf {DEPRECATED[argv[0]]}`")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            raise AssertionError(f"{command!r}: the CLI rejects it: {err.getvalue().strip()}") from None
        return
    if hasattr(args, "experiment") and hasattr(args, "overrides"):  # rbr-rlhf experiment ...: the experiment loads
        from rbr_rlhf.experiment.config import load_experiment

        try:
            load_experiment(args.experiment, list(args.overrides))
        except (ValueError, FileNotFoundError) as e:
            raise AssertionError(f"{command!r}: {e}") from None
    if hasattr(args, "recipe") and hasattr(args, "overrides"):
        from rbr_rlhf.ppo.config import load_config

        bad = [o for o in args.overrides if "=" not in o]
        assert not bad, f"{command!r}: overrides must be key=value: {bad}"
        try:
            load_config(args.recipe, list(args.overrides))
        except (ValueError, FileNotFoundError) as e:
            raise AssertionError(f"{command!r}: {e}") from None
