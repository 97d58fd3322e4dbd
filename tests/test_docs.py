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
                "rbr-rlhf experiment run smollm2-135m-cpu sft.epoch=3", "rbr-rlhf experiment table no-such-experiment",
                f"rbr-rlhf {next(iter(DEPRECATED))} --data p.jsonl --out rm"):  # an old spelling: works, but not in docs
        with pytest.raises(AssertionError):
            check(bad)
    assert commands_in("a && .venv/bin/rbr-rlhf train X \\\n  k=v  # note\n") == ["rbr-rlhf train X k=v"]


def test_config_reference_is_generated():
    from rbr_rlhf.configref import generate

    committed = (REPO / "docs" / "config-reference.md").read_text()
    assert committed == generate(), "docs/config-reference.md is stale: rbr-rlhf config-reference > docs/config-reference.md"
    assert "`launch.signal_seconds`" in committed and "`ppo.kl.target`" in committed


def test_architecture_page_names_what_exists():
    """docs/architecture.md: linked from the README, two mermaid diagrams, every package in its table, and
    every file and class (or Class.method) it names exists in the code."""
    text = (REPO / "docs" / "architecture.md").read_text()
    assert "docs/architecture.md" in (REPO / "README.md").read_text()
    assert text.count("```mermaid") == 2
    src = REPO / "rbr_rlhf"
    packages = sorted(p.name for p in src.iterdir() if (p / "__init__.py").exists() or p.name == "ppo")
    for pkg in packages:
        assert f"| `{pkg}/` |" in text, f"docs/architecture.md: no row for {pkg}/"
    code = "\n".join(p.read_text() for p in src.rglob("*.py"))
    for row in re.findall(r"^\| `(\w+)/` \|.*$", text, flags=re.M):
        line = next(l for l in text.splitlines() if l.startswith(f"| `{row}/` |"))
        for name in re.findall(r"`([\w/]+\.(?:py|yaml|j2))`", line):
            assert (src / row / name).exists(), f"docs/architecture.md: {row}/{name} does not exist"
    for path in re.findall(r"\b((?:ppo|rbr|rollout|service|rm|launch)/\w+\.py)\b", text):
        assert (src / path).exists(), f"docs/architecture.md: rbr_rlhf/{path} does not exist"
    prose = {"DeepSpeed", "FastAPI", "CleanRL", "OpenAI", "ZeRO", "LoRA", "RewardTrainer"}  # other projects
    for cls, attr in re.findall(r"\b([A-Z][a-z]+[A-Z]\w*|Rollout|Reward|RBRScore)(?:\.(\w+))?\b", text):
        if cls in prose:
            continue
        assert re.search(rf"^class {cls}\b", code, flags=re.M), f"docs/architecture.md: no class {cls}"
        if attr:
            assert re.search(rf"def {attr}\b", code), f"docs/architecture.md: no {cls}.{attr}"
