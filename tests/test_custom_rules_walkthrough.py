"""docs/custom-rules.md, run: every `rbr-rlhf` command of its medical walk-through, from `rules new` to one
PPO step, read from the page itself (so the page and the test cannot drift apart).

`runs/` and `my-rules/` become temporary directories. The walk-through's helpful RM command is the one
``ppo_assets.tiny_assets`` runs (asserted below), so the test uses that session fixture's RM instead of
training a second identical one.
"""

import re
import shlex

import pytest

from cli_check import commands_in
from conftest import REPO
from ppo_assets import launch, metrics
from rbr_rlhf.cli import main
from test_docs import shell_blocks

PAGE = REPO / "docs" / "custom-rules.md"


def walkthrough_commands() -> list[str]:
    text = PAGE.read_text().split("## Another example")[0]
    return [c for block in shell_blocks(text) for c in commands_in(block)]


def test_walkthrough_covers_rules_new_to_a_ppo_step():
    subs = [" ".join(c.split()[1:3]) for c in walkthrough_commands()]
    assert subs[0] == "rules new" and subs[-1].startswith("train ")
    for sub in ("grader train-classifier", "rbr fit", "rbr grade", "rm train"):
        assert sub in subs


@pytest.mark.slow
def test_custom_rules_walkthrough(tiny_assets, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    rm = tiny_assets / "rm"
    for command in walkthrough_commands():
        command = command.replace("runs/medical-rm", str(rm))
        command = re.sub(r"(?<![\w/.-])(runs|my-rules)(?=/|\s|$)", lambda m: f"{tmp_path}/{m.group(1)}", command)
        assert " runs/" not in command and "my-rules" not in command.replace(f"{tmp_path}/my-rules", ""), command
        argv = shlex.split(command)[1:]
        if argv[:2] == ["rm", "train"]:  # the RM tiny_assets trained with exactly these settings
            assert "--limit 64 --max-length 64" in command and "hh-rlhf-harmless/test.jsonl.gz" in command
            continue
        if argv[0] == "train":
            log = tmp_path / "train.log"
            p = launch(argv[1:], log)
            assert p.wait(timeout=1200) == 0, log.read_text()[-3000:]
            run = tmp_path / "runs" / "medical"
            m = metrics(run)
            assert list(m) == [1]
            # every medical prompt has a category of the rule set: each completion got an RBR term
            assert m[1]["reward/rbr_fraction"] == 1.0 and m[1]["reward/rbr"] == m[1]["reward/rbr"]  # not NaN
            continue
        assert main(argv) == 0, f"{command}\n{capsys.readouterr().err[-3000:]}"
        out = capsys.readouterr().out
        if argv[:2] == ["rules", "check"]:
            assert "NOT valid" not in out and "unassigned rows: 0" in out
