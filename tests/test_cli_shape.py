"""The CLI's shape: ``rbr-rlhf GROUP VERB`` everywhere except the main job's top-level verbs, a default in
every option's ``--help``, and the old flat spellings (``train-rm``, ``serve-grader``, ...) kept as hidden
aliases that run the same command and warn. Also: nothing in the repository spells an old command any more.
Fast: nothing here loads a model."""

import argparse
import re
import subprocess

import pytest

import rbr_rlhf.cli as cli
from conftest import REPO
from rbr_rlhf.cli import DEPRECATED, TOP_LEVEL, build_parser, main, subcommands, walk

PARSER = build_parser()
COMMANDS = dict(walk(PARSER))  # ("rm", "train") -> its parser; groups and leaves, aliases not listed
LEAVES = {path: p for path, p in COMMANDS.items() if subcommands(p) is None}
GROUPS = {"rules", "grader", "rbr", "prompts", "rm", "adaptive", "rollout", "launch", "experiment"}


def test_every_command_is_a_group_verb_or_a_top_level_verb():
    for path in LEAVES:
        assert (len(path) == 2 and path[0] in GROUPS) or (len(path) == 1 and path[0] in TOP_LEVEL), \
            f"`rbr-rlhf {' '.join(path)}`: put it under a group (rbr-rlhf GROUP VERB)"
    assert {p[0] for p in LEAVES if len(p) == 2} == GROUPS
    assert {p for p in LEAVES if len(p) == 1} == {(t,) for t in TOP_LEVEL}
    assert {("rm", "train"), ("rm", "eval"), ("grader", "serve"), ("rollout", "serve"), ("rbr", "grade"),
            ("rbr", "build"), ("prompts", "classify"), ("launch", "template")} <= set(LEAVES)


def test_only_the_aliases_are_hidden():
    top = subcommands(PARSER)
    assert set(top.choices) - {p[0] for p in COMMANDS} == set(DEPRECATED)
    for path, parser in COMMANDS.items():
        sub = subcommands(parser)
        if sub is not None:  # a group lists every verb it has
            assert set(sub.choices) == {p[-1] for p in COMMANDS if p[:-1] == path}, path
    help_text = PARSER.format_help()
    for old in DEPRECATED:
        assert not re.search(rf"^\s+{old}\s", help_text, flags=re.M), f"{old} is listed in --help"


@pytest.mark.parametrize("path", sorted(LEAVES), ids=" ".join)
def test_help_shows_the_default_of_every_option(path, capsys):
    parser = LEAVES[path]
    assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    with pytest.raises(SystemExit) as e:
        PARSER.parse_args([*path, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: rbr-rlhf {' '.join(path)}")
    formatter = parser.formatter_class(prog="rbr-rlhf")
    for action in parser._actions:
        if not action.option_strings or argparse.SUPPRESS in (action.help, action.default) or action.required:
            continue
        shown = formatter._get_help_string(action) or ""
        assert "default" in shown, f"rbr-rlhf {' '.join(path)} {action.option_strings[0]}: no default in {shown!r}"


def test_help_shows_a_real_value():
    text = LEAVES[("rm", "train")].format_help()
    assert re.search(r"--epochs EPOCHS\s+\(default: 1\.0\)", text) and "(default: 0.1)" in text
    assert "(default: 8700)" in LEAVES[("grader", "serve")].format_help()


def minimal_argv(parser: argparse.ArgumentParser) -> list[str]:
    """The required options of a command, each with a placeholder value."""
    argv = []
    for action in parser._actions:
        if action.required and action.option_strings:
            argv += [action.option_strings[0], str(action.choices[0]) if action.choices else "x"]
    return argv


@pytest.mark.parametrize("old,new", sorted(DEPRECATED.items()))
def test_old_spelling_is_an_alias_that_warns(old, new, monkeypatch, capsys):
    leaf = LEAVES[tuple(new.split())]
    assert subcommands(PARSER).choices[old] is leaf  # the very same parser: same options, same handler
    args = minimal_argv(leaf)
    assert PARSER.parse_args([old, *args]).handler is PARSER.parse_args([*new.split(), *args]).handler

    parser = build_parser()
    seen = []
    subcommands(parser).choices[old].set_defaults(handler=lambda a: seen.append(a.command_path) or 0)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert main([old, *args]) == 0
    assert capsys.readouterr().err.strip() == f"rbr-rlhf {old} is deprecated; use rbr-rlhf {new}"
    assert main([*new.split(), *args]) == 0
    assert capsys.readouterr().err == ""
    assert seen == [new, new]


OLD_COMMAND = re.compile(r"(?:rbr-rlhf|rbr_rlhf\.cli|\"\$\{CLI\[@\]\}\")\s+(?:%s)\b|\[\s*\"(?:%s)\"" % (
    "|".join(map(re.escape, DEPRECATED)), "|".join(map(re.escape, DEPRECATED))))


def test_nothing_in_the_repository_spells_an_old_command():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    bad = []
    for name in files:
        path = REPO / name
        if name in ("rbr_rlhf/cli.py", "tests/test_cli_shape.py") or not path.is_file():
            continue
        if path.suffix not in (".py", ".md", ".yaml", ".yml", ".sh", ".j2", ".toml") and not path.name.startswith("Dockerfile"):
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OLD_COMMAND.search(line):
                bad.append(f"{name}:{i}: {line.strip()}")
    assert not bad, "old command spellings (use the grouped ones):\n" + "\n".join(bad)
