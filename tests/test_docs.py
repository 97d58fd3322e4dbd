"""The docs: every ``rbr-rlhf`` command in a shell code block of README.md, docs/*.md and launch/README.md is
checked against the real CLI parser (and the recipe schema; old spellings such as ``train-rm`` are refused),
and docs/config-reference.md is the generator's output."""

import re

import pytest

from cli_check import check, commands_in
from rbr_rlhf.cli import DEPRECATED
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "launch" / "README.md"]
SHELL = {"", "bash", "sh", "shell", "console"}


def shell_blocks(text: str) -> list[str]:
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S) if lang in SHELL]


def documented_commands() -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        for block in shell_blocks(path.read_text()):
            out += [(path.name, cmd) for cmd in commands_in(block)]
    return out


COMMANDS = documented_commands()


def test_the_docs_show_the_main_commands():
    shown = " ".join(c for _, c in COMMANDS)
    for sub in ("train smollm2-135m-cpu", "launch slurm", "launch local", "resume=auto", "config-reference",
                "grader serve", "rollout serve", "rbr build", "rm train", "rules check"):
        assert sub in shown, f"no docs code block shows `rbr-rlhf {sub}`"
    assert len(COMMANDS) > 30


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_documented_command_is_valid(where, command):
    check(command)


def test_checker_catches_bad_commands():
    for bad in ("rbr-rlhf trian smollm2-135m-cpu", "rbr-rlhf train no-such-recipe",
                "rbr-rlhf train smollm2-135m-cpu ppo.learning_rate=1", "rbr-rlhf train smollm2-135m-cpu total_steps=many",
                "rbr-rlhf launch slurm smollm2-135m-cpu --nodes two", "rbr-rlhf grader eval --rules default",
                f"rbr-rlhf {next(iter(DEPRECATED))} --data p.jsonl --out rm"):  # an old spelling: works, but not in docs
        with pytest.raises(AssertionError):
            check(bad)
    assert commands_in("a && .venv/bin/rbr-rlhf train X \\\n  k=v  # note\n") == ["rbr-rlhf train X k=v"]


def test_config_reference_is_generated():
    from rbr_rlhf.configref import generate

    committed = (REPO / "docs" / "config-reference.md").read_text()
    assert committed == generate(), "docs/config-reference.md is stale: rbr-rlhf config-reference > docs/config-reference.md"
    assert "`launch.signal_seconds`" in committed and "`ppo.kl.target`" in committed
