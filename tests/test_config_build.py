"""The typed ``build`` sub-configs of a recipe mirror the builders they feed, and bad keys fail clearly."""

from __future__ import annotations

import dataclasses

import pytest

from rbr_rlhf.ppo.config import GraderBuild, RewardModelBuild, WeightsBuild, load_config

RUN_FILLS = {"out", "grader", "rm", "rules"}  # BuildConfig fields the run sets itself


def defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def test_rbr_weights_build_mirrors_the_pipeline_build_config():
    from rbr_rlhf.pipeline.build import BuildConfig

    assert {f.name for f in dataclasses.fields(WeightsBuild)} == {f.name for f in dataclasses.fields(BuildConfig)} - RUN_FILLS
    ours, theirs = defaults(WeightsBuild), defaults(BuildConfig)
    assert {k: v for k, v in ours.items() if k in theirs} == {k: v for k, v in theirs.items() if k not in RUN_FILLS}


def test_reward_model_build_mirrors_the_rm_train_config():
    from rbr_rlhf.rm.train import RMTrainConfig

    assert {f.name for f in dataclasses.fields(RewardModelBuild)} == (
        {f.name for f in dataclasses.fields(RMTrainConfig)} | {"data", "limit", "eval_fraction"})
    ours = defaults(RewardModelBuild)
    assert all(ours[k] == v for k, v in defaults(RMTrainConfig).items())


def test_the_cpu_recipe_fills_typed_build_configs():
    cfg = load_config("smollm2-135m-cpu", [])
    assert isinstance(cfg.rbr.build.weights, WeightsBuild) and cfg.rbr.build.weights.keep == "graded"
    assert isinstance(cfg.rbr.build.grader, GraderBuild) and cfg.rbr.build.grader.lm == "none"
    assert cfg.reward_model.build.limit == 400 and cfg.rbr.build.unsafe_answers.max_tokens == 48


@pytest.mark.parametrize("key", ["rbr.build.weights.kep=graded", "rbr.build.grader.trian=x.jsonl",
                                 "reward_model.build.epoch=2", "rbr.build.unsafe_answers.pth=x"])
def test_a_typo_in_a_build_config_names_the_key(key):
    with pytest.raises(ValueError, match=f"bad configuration key '{key.split('=')[0]}'"):
        load_config("smollm2-135m-cpu", [key])


def test_benign_fraction_was_removed(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  benign_fraction: 0.3\n")
    for args in ((str(recipe), []), (None, ["data.benign_fraction=0.5"])):
        with pytest.raises(ValueError, match="'data.benign_fraction' was removed"):
            load_config(*args)


def test_training_prompts_may_have_a_tighter_token_cap_than_evaluation_prompts():
    from transformers import AutoTokenizer

    from conftest import SHARED_DATA
    from rbr_rlhf.models import resolve_model
    from rbr_rlhf.ppo.prompts import load_prompts
    from rbr_rlhf.rollout.types import chat_prompt_ids
    from rbr_rlhf.rules import load_rules

    if not (SHARED_DATA / "rbr_gold" / "train.jsonl").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2"))
    rules = load_rules("default")
    n_tokens = lambda r: len(chat_prompt_ids(tok, r["conversation"]))  # noqa: E731
    cfg = load_config("smollm2-135m-cpu", [f"data.safety_prompts={SHARED_DATA}/rbr_gold/train.jsonl",
                                           f"data.eval_prompts={SHARED_DATA}/rbr_gold/test.jsonl", "data.xstest=null",
                                           "data.max_train_prompt_tokens=100", "data.eval_limit=200"])
    train, evaluation = load_prompts(cfg, rules, tok)
    assert train and max(map(n_tokens, train)) <= 100
    assert 100 < max(map(n_tokens, evaluation)) <= cfg.data.max_prompt_tokens
    cfg = load_config("smollm2-135m-cpu", [f"data.safety_prompts={SHARED_DATA}/rbr_gold/train.jsonl", "data.eval_prompts=null",
                                           "data.xstest=null", "data.max_train_prompt_tokens=null"])
    assert 100 < max(map(n_tokens, load_prompts(cfg, rules, tok)[0])) <= cfg.data.max_prompt_tokens
