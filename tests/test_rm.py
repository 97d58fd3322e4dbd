"""Reward models: preference-row layouts, pairwise accuracy, and `rm train` / `rm eval` on real HH-RLHF pairs."""

import json

import numpy as np
import pytest

from rbr_rlhf.cli import main
from rbr_rlhf.rm.text import pair_texts, parse_hh_dialogue, render_dialogue
from rbr_rlhf.rm.train import pairwise_accuracy, split_pairs


def test_preference_layouts_render_the_same_text():
    hh = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    explicit = {"prompt": [{"role": "user", "content": "hi"}], "chosen": "hello", "rejected": "go away"}
    conversational = {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                      "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}
    assert pair_texts(hh) == pair_texts(explicit) == pair_texts(conversational)
    assert parse_hh_dialogue(hh["chosen"]) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert render_dialogue("hi", "hello") == hh["chosen"]
    with pytest.raises(ValueError, match="chosen"):
        pair_texts({"chosen": "x"})


def test_ties_count_as_wrong():
    assert pairwise_accuracy(np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 4.0])) == pytest.approx(1 / 3)


def test_split_is_stable():
    pairs = [(f"c{i}", f"r{i}") for i in range(100)]
    a, b = split_pairs(pairs, 0.2), split_pairs(pairs, 0.2)
    assert a == b and 5 < len(a[1]) < 40 and len(a[0]) + len(a[1]) == 100


@pytest.mark.slow
def test_train_and_eval_rm_cli(tiny_assets, gold_dir, capsys):
    # `rm train --data HH --limit 64 --max-length 64 --out DIR --json` is the command tiny_assets runs (for the
    # PPO tests), and it keeps that command's --json line: asserted here instead of training the same RM twice.
    hh = gold_dir.parent / "hh-rlhf-harmless" / "test.jsonl.gz"
    rm = tiny_assets / "rm"
    info = json.loads((tiny_assets / "rm_train.json").read_text())
    assert info["out"] == str(rm)
    assert info["train_pairs"] + info["eval_pairs"] == 64 and 0 <= info["eval_accuracy"] <= 1
    assert (rm / "model.safetensors").exists()
    assert main(["rm", "eval", "--rm", str(rm), "--pairs", str(hh), "--limit", "40", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["pairs"] == 40 and set(result) >= {"accuracy", "ties", "mean_margin"}
