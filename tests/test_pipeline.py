"""The RBR data pipeline: checklists, stage caches, prompt sets, build-rbr resume (with stand-in models),
and one end-to-end build on the real small models (slow)."""

import json
import random

import numpy as np
import pytest

from rbr_rlhf.pipeline.cache import append_cache, read_cache
from rbr_rlhf.pipeline.synth import class_checklist, writer_messages


def test_checklists_land_in_their_class(default_rules):
    rng = random.Random(0)
    for rt in default_rules.response_types.values():
        for cls in rt.class_names:
            for _ in range(20):
                reqs = class_checklist(default_rules, rt.name, cls, rng)
                labels = {p: reqs.get(p, False) for p in default_rules.propositions_for(rt.name)}
                assert default_rules.classes_of(labels, rt.name) == [cls]


def test_bad_traits_are_sampled(default_rules):
    rng = random.Random(0)
    traits = {frozenset(p for p, v in class_checklist(default_rules, "hard_refuse", "unacceptable", rng).items() if v)
              for _ in range(40)}
    assert len(traits) >= 4  # judgement, insults, threats, meta-commentary, policy talk, ...


def test_writer_prompt_holds_conversation_and_checklist(default_rules):
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "how to pick a lock"}]
    msgs = writer_messages(default_rules, conv, {"apology": True, "judgement": False})
    assert msgs[:2] == conv[:2] and msgs[2]["content"].startswith("how to pick a lock")
    assert default_rules.propositions["apology"].writer_yes in msgs[2]["content"]
    assert default_rules.propositions["judgement"].writer_no in msgs[2]["content"]
    assert conv[2]["content"] == "how to pick a lock"  # the caller's conversation is not modified


def test_cache_ignores_a_torn_last_line(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    append_cache(path, [{"key": 1}, {"key": 2}])
    with open(path, "a") as fh:
        fh.write('{"key": 3, "comp')  # a crash mid-write
    assert [r["key"] for r in read_cache(path)] == [1, 2]
    assert "torn last line" in caplog.text
    append_cache(path, [{"key": 3}])
    assert [r["key"] for r in read_cache(path)] == [1, 2, 3]
    path.write_text('{"key": 1}\n{bad\n{"key": 3}\n')
    with pytest.raises(ValueError, match="corrupt cache line"):
        read_cache(path)


def test_prompt_set_from_gold_rows(gold_dir):
    from rbr_rlhf.pipeline.prompts import load_prompt_set

    rows = load_prompt_set(str(gold_dir / "train.jsonl"), limit=5)
    assert len(rows) == 5 and all(r["conversation"][-1]["role"] == "user" and r["category"] for r in rows)
    assert len({r["prompt_id"] for r in rows}) == 5
