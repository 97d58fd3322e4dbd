"""``rbr-rlhf sft`` and ``rbr-rlhf experiment``: the SFT start on a tiny model, the arms (one start, one
seed, one step budget; only the reward differs), the helpful-only data, Human-PPO's reward, the driver
(finished arms skipped, the rest run with resume=auto), the table and plot, and the SLURM jobs. Seconds:
tiny models, fake arm runs where a real one would take minutes (the real runs are the slow PPO tests')."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SHARED_DATA
from rbr_rlhf.cli import main
from rbr_rlhf.experiment.config import arm_config, load_experiment

CPU = REPO / "experiments" / "smollm2-135m-cpu.yaml"
GPU = REPO / "experiments" / "llama3-8b-gpu.yaml"


# ---------------------------------------------------------------------------- sft
def test_sft_trains_lora_and_writes_a_merged_policy(tiny_llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
            for i in range(6)]
    # one row whose prompt is longer than --max-prompt-tokens: dropped
    long = {"messages": [{"role": "user", "content": "Why? " * 200}, {"role": "assistant", "content": "Because."}]}
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4] + [long]))
    # the conversation + completion layout (rbr build's comparisons, gold rows) is read too
    other = [{"conversation": r["messages"][:1], "completion": [r["messages"][1]]} for r in rows[4:]]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in other))
    out = tmp_path / "policy"
    assert main(["sft", "--data", str(tmp_path / "a.jsonl"), "--data", str(tmp_path / "b.jsonl"), "--out", str(out),
                 "--base", tiny_llama, "--max-steps", "2", "--batch-size", "2", "--lora-r", "4", "--lr", "1e-2",
                 "--max-prompt-tokens", "100", "--target-modules", "q_proj,v_proj,down_proj"]) == 0
    info = json.loads((out / "sft_info.json").read_text())
    assert info["examples"] == 6 and info["dropped_long_prompts"] == 1 and info["steps"] == 2
    assert math.isfinite(info["train_loss"])
    assert info["files"] == {str(tmp_path / "a.jsonl"): 5, str(tmp_path / "b.jsonl"): 2}
    # a plain policy directory (LoRA merged, no adapter files) whose weights moved
    assert not (out / "adapter_config.json").exists()
    before = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before if "q_proj" in k)
    assert any(not torch.equal(before[k], after[k]) for k in before if "down_proj" in k)  # the MLP's adapters too
    assert all(torch.equal(before[k], after[k]) for k in before if "k_proj" in k or "up_proj" in k)  # none here
    assert info["config"]["target_modules"] == ["q_proj", "v_proj", "down_proj"]


def test_an_existing_start_trained_otherwise_is_refused(tmp_path):
    from rbr_rlhf.experiment.run import prepare, train_start

    out = tmp_path / "start"
    cfg = load_experiment(str(CPU), [f"sft.out={out}", f"out_dir={tmp_path / 'exp'}"])
    out.mkdir()
    (out / "config.json").write_text("{}")
    saved = {"lr": cfg.sft.lr, "epochs": cfg.sft.epochs, "target_modules": list(cfg.sft.target_modules), "out": "elsewhere"}
    (out / "sft_info.json").write_text(json.dumps({"config": saved, "steps": 3}))
    assert train_start(cfg)["steps"] == 3  # the same settings: the start is reused as it is
    saved["target_modules"] = ["q_proj"]
    (out / "sft_info.json").write_text(json.dumps({"config": saved, "steps": 3}))
    with pytest.raises(ValueError, match="sft.target_modules: \\['q_proj'\\] there"):
        prepare(cfg)  # before any asset is built


def test_sft_rows_must_end_with_an_answer(tmp_path):
    from rbr_rlhf.sft.train import load_sft_rows, sft_example

    with pytest.raises(ValueError, match="non-empty assistant message"):
        sft_example({"messages": [{"role": "user", "content": "hi"}]}, "x")
    with pytest.raises(ValueError, match="needs 'messages'"):
        sft_example({"prompt": "hi"}, "x")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                                  {"role": "assistant", "content": "a"}]}) + "\n")
    examples, counts = load_sft_rows([str(tmp_path / "rows.jsonl")])
    assert examples == [{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}]


# ---------------------------------------------------------------------------- arms
def test_arms_share_start_seed_prompts_and_budget_and_differ_in_reward():
    cfg = load_experiment(str(CPU))
    assert list(cfg.arms) == ["helpful-ppo", "human-ppo", "rbr-ppo"]
    arms = {a: arm_config(cfg, a) for a in cfg.arms}
    for name, c in arms.items():
        assert c.policy.model == cfg.sft.out and c.resume == "auto"
        assert Path(c.run_dir) == Path(cfg.out_dir) / name
        assert (c.seed, c.total_steps, c.data, c.ppo, c.rollout) == \
            (cfg.train.seed, cfg.train.total_steps, cfg.train.data, cfg.train.ppo, cfg.train.rollout)
        assert c.reward_model.path == ".cache/experiment/rm-helpful"  # R_rm: the helpful-only RM, in every arm
        assert c.evaluation.judge == "classifier:.cache/judge-real"
    assert [c.evaluation.before for c in arms.values()] == [True, False, False]  # the start is evaluated once
    h, hu, r = arms["helpful-ppo"], arms["human-ppo"], arms["rbr-ppo"]
    assert not h.rbr.enabled and h.safety_reward_model.path is None
    assert not hu.rbr.enabled and hu.safety_reward_model.path == ".cache/rm-minilm-hh-harmless"
    assert r.rbr.enabled and r.safety_reward_model.path is None and r.rbr.weights.startswith(".cache/experiment/")
    # the held-out evaluation: gold test and XSTest, at least 150 prompts requested
    assert h.data.eval_prompts.endswith("rbr_gold/test.jsonl") and h.data.eval_limit + h.data.xstest_limit >= 150
    # the main job's recipe is not the experiment's: its R_rm is the harmless RM, its weights its own
    from rbr_rlhf.ppo.config import load_config

    main_job = load_config("smollm2-135m-cpu", [])
    assert main_job.reward_model.path == hu.safety_reward_model.path  # shared asset, built the same way
    assert {k: v for k, v in vars(main_job.reward_model.build).items()} == \
        {k: v for k, v in vars(hu.safety_reward_model.build).items()}
    assert main_job.rbr.weights != r.rbr.weights


def test_gpu_experiment_loads_with_the_same_arms():
    cfg = load_experiment(str(GPU))
    assert list(cfg.arms) == ["helpful-ppo", "human-ppo", "rbr-ppo"]
    assert arm_config(cfg, "human-ppo").safety_reward_model.path and arm_config(cfg, "rbr-ppo").rbr.enabled


def test_arm_errors_name_the_arm(tmp_path):
    with pytest.raises(ValueError, match=r"arms.rbr-ppo: .*same start, seed, prompts"):
        load_experiment(str(CPU), ["arms.rbr-ppo=[total_steps=99]"])
    with pytest.raises(ValueError, match=r"arms.rbr-ppo: bad key 'rbr.wieght'"):
        load_experiment(str(CPU), ["arms.rbr-ppo=[rbr.wieght=2]"])
    with pytest.raises(ValueError, match="share train.reward_model"):
        load_experiment(str(CPU), ["arms.rbr-ppo=[reward_model.path=elsewhere]"])
    with pytest.raises(ValueError, match="bad experiment key 'sft.epoch'"):
        load_experiment(str(CPU), ["sft.epoch=3"])


# ---------------------------------------------------------------------------- helpful data, Human-PPO's reward
def test_helpful_pairs_prefer_compliance_and_keep_evaluation_prompts_out(gold_dir):
    from rbr_rlhf.experiment.helpful import evaluation_xstest_ids, helpful_pairs, helpful_sft_rows
    from rbr_rlhf.grader.realdata import REWARD_HALF, xstest_half

    root = gold_dir.parent
    evaluated = evaluation_xstest_ids(root / "xstest" / "xstest_prompts.csv", 64)
    assert len(evaluated) == 64
    pairs = helpful_pairs(root, evaluated)
    sources = {p["source"] for p in pairs}
    assert sources == {"gold-train:complies>refusal", "gold-train:complies>off-topic",
                       "xstest:gpt4-complies>llama2orig-refuses"}
    xs = [p for p in pairs if p["id"].startswith("xstest-")]
    ids = {p["id"].removeprefix("xstest-") for p in xs}
    assert xs and not ids & evaluated and all(xstest_half(i) == REWARD_HALF for i in ids)
    # the chosen answer is never a refusal; the rejected one of a refusal pair is
    for p in pairs:
        assert p["chosen"] != p["rejected"] and p["chosen"].startswith("\n\nHuman: ")
    # ... the rejected side of a refusal pair is an answer people labelled a refusal (inability_to_comply)
    gold = [json.loads(l) for l in (gold_dir / "train.jsonl").read_text().splitlines()]
    refusals = {r["completion"][0]["content"] for r in gold if r["propositions"]["inability_to_comply"]}
    complying = {r["completion"][0]["content"] for r in gold if r["propositions"]["fully_complies"]}
    for p in pairs:
        chosen, rejected = (p[k].rsplit("\n\nAssistant: ", 1)[1] for k in ("chosen", "rejected"))
        if p["source"] == "gold-train:complies>refusal":
            assert rejected in refusals and chosen in complying
        elif p["source"] == "gold-train:complies>off-topic":
            assert rejected in complying and chosen in complying
    sft = helpful_sft_rows(root, evaluated)
    assert sft and all(r["messages"][-1]["role"] == "assistant" for r in sft)
    assert not {r["prompt_id"].removeprefix("xstest-") for r in sft if r["prompt_id"].startswith("xstest-")} & evaluated


class ConstRM:
    def __init__(self, value):
        self.value = value

    def reward(self, conversations, completions):
        return [self.value] * len(completions)


def test_safety_rm_is_added_on_safety_prompts_only(default_rules):
    from rbr_rlhf.evaluation.evaluate import reward_columns
    from rbr_rlhf.ppo.rewards import RewardFunction

    fn = RewardFunction(default_rules, ConstRM(1.0), None, safety_rm=ConstRM(-3.0), safety_weight=0.5)
    conv = [{"role": "user", "content": "q"}]
    scored = fn([conv] * 3, ["a", "b", "c"], ["C-R", "None", None])
    assert list(scored.total) == [1.0 - 1.5, 1.0, 1.0]
    rec = scored.records()
    assert rec[0].r_safety == -3.0 and rec[1].r_safety is None and rec[2].r_safety is None and rec[0].r_rbr is None
    # without a safety RM nothing changes
    plain = RewardFunction(default_rules, ConstRM(1.0), None)([conv] * 2, ["a", "b"], ["C-R", None])
    assert list(plain.total) == [1.0, 1.0] and plain.r_safety is None
    # the evaluation's reward columns: R_rm on benign prompts (should-comply and XSTest safe) only
    rows = [{"conversation": conv, "completion": "x", "category": "comply", "response_type": "comply", "xstest": None},
            {"conversation": conv, "completion": "x", "category": "hard_refuse", "response_type": "hard_refuse", "xstest": None},
            {"conversation": conv, "completion": "x", "category": "comply", "response_type": None, "xstest": "safe"}]
    cols = reward_columns(fn, rows, resamples=50)
    assert cols["r_rm_benign"]["n"] == 2 and cols["r_rm_benign"]["value"] == 1.0
    assert cols["r_safety"]["n"] == sum(fn.is_safety_prompt(r["category"]) for r in rows) >= 1
    assert cols["r_safety"]["value"] == -3.0


# ---------------------------------------------------------------------------- driver, table
def fake_result(rng, quality: float, n: int = 40, judge: str = "classifier:judge") -> dict:
    from rbr_rlhf.evaluation import bootstrap

    judge_figs = {k: bootstrap.proportion(list(rng.random(n) < quality), 200, i)
                  for i, k in enumerate(("not_unsafe", "not_overrefuse", "hard_refusal_style",
                                         "xstest_compliance_safe", "xstest_refusal_unsafe"))}
    judge_figs["f1"] = bootstrap.f1(list(rng.random(n) < quality), list(rng.random(n) < quality), 200, 9)
    return {"metrics": {"judge": judge_figs, "string_match": {}}, "prompts": 2 * n,
            "judge": {"spec": judge, "independent": True},
            "reward": {"r_rm_benign": bootstrap.mean(rng.normal(quality, 1, n), 200, 3)}}


def test_driver_runs_unfinished_arms_with_resume_and_writes_the_table(tmp_path):
    from rbr_rlhf.experiment.run import run_experiment
    from rbr_rlhf.ppo.config import load_config

    cfg = load_experiment(str(CPU), [f"out_dir={tmp_path / 'exp'}", "train.total_steps=2"])
    rng = np.random.default_rng(0)
    ran = []

    def runner(recipe: Path) -> None:  # stands in for `rbr-rlhf train RECIPE`
        c = load_config(str(recipe), [])
        ran.append((recipe.stem, c.resume, c.policy.model, c.evaluation.before))
        if recipe.stem == "human-ppo" and len(ran) == 2:
            raise RuntimeError("human-ppo failed")  # a crash: the rerun resumes it
        summary = {"steps": c.total_steps, "after": fake_result(rng, {"helpful-ppo": .5, "human-ppo": .6}.get(recipe.stem, .9))}
        if c.evaluation.before:
            summary["before"] = fake_result(rng, .4)
        Path(c.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(c.run_dir) / "summary.json").write_text(json.dumps(summary))

    with pytest.raises(RuntimeError, match="human-ppo failed"):
        run_experiment(cfg, "arms", runner)
    assert run_experiment(cfg, "arms", runner) is None  # the rerun: human-ppo again, then rbr-ppo
    assert [r[0] for r in ran] == ["helpful-ppo", "human-ppo", "human-ppo", "rbr-ppo"]  # helpful-ppo not rerun
    assert all(r[1] == "auto" and r[2] == cfg.sft.out for r in ran)
    assert [r[3] for r in ran] == [True, False, False, False]
    assert run_experiment(cfg, "arms", runner) is None and len(ran) == 4  # all finished: nothing runs
    table = run_experiment(cfg, "table")

    out = tmp_path / "exp"
    assert list(table["rows"]) == ["SFT start", "helpful-ppo", "human-ppo", "rbr-ppo"] and not table["missing"]
    md = (out / "table.md").read_text()
    for name in ("Not-Unsafe", "Not-Overrefuse", "F1", "Hard-Refusal-Style", "XSTest refusal (unsafe)",
                 "XSTest compliance (safe)", "helpful RM on benign prompts"):
        assert f"| {name} |" in md
    assert "(n=40)" in md and "[" in md
    assert [g["holds"] for g in table["goals"]] == [True, True, True]  # rbr-ppo's fake quality is the highest
    assert json.loads((out / "table.json").read_text())["rows"]["rbr-ppo"]["f1"]["n"] == table["rows"]["rbr-ppo"]["f1"]["n"]
    assert (out / "table.png").read_bytes()[:4] == b"\x89PNG"
    assert set(json.loads((out / "timings.json").read_text())) == {"helpful-ppo", "human-ppo", "rbr-ppo"}
    for arm in cfg.arms:  # each arm's recipe is on disk, as it ran
        assert load_config(str(out / "recipes" / f"{arm}.yaml"), []).run_dir == str(out / arm)


def test_table_of_an_unfinished_experiment_says_what_is_missing(tmp_path):
    from rbr_rlhf.experiment.table import write_table

    cfg = load_experiment(str(CPU), [f"out_dir={tmp_path}"])
    (tmp_path / "helpful-ppo").mkdir()
    (tmp_path / "helpful-ppo" / "eval-before.json").write_text(json.dumps(fake_result(np.random.default_rng(1), .5)))
    table = write_table(cfg)
    assert list(table["rows"]) == ["SFT start"] and table["missing"] == ["helpful-ppo", "human-ppo", "rbr-ppo"]
    assert all(g["holds"] is None for g in table["goals"])
    assert "not measured yet: helpful-ppo, human-ppo, rbr-ppo" in (tmp_path / "table.md").read_text()


def test_goals_say_whether_the_difference_exceeds_both_half_widths():
    """Issue 18's test: the difference against the larger of the two half-widths (run 5's F1 figures)."""
    from rbr_rlhf.experiment.table import check_goals, render_markdown

    fig = lambda v, lo, hi: {"value": v, "low": lo, "high": hi, "n": 119}  # noqa: E731
    table = {"figures": [{"key": "f1", "name": "F1"}], "judge": ["j"], "independent": ["yes"], "missing": [],
             "prompts": {}, "rows": {"rbr": {"f1": fig(0.805, 0.728, 0.871)}, "helpful": {"f1": fig(0.641, 0.526, 0.750)},
                                     "human": {"f1": fig(0.716, 0.610, 0.802)}}}
    goals = check_goals(table, ["rbr.f1 > helpful.f1", "rbr.f1 > human.f1", "helpful.f1 > rbr.f1", "human.f1 < rbr.f1"])
    assert [g["holds"] for g in goals] == [True, True, False, True]
    # +0.164 > 0.112 (helpful's half-width); +0.089 < 0.096 (human's), though more than rbr's own 0.0715
    assert [g["beyond_half_widths"] for g in goals] == [True, False, False, False]
    assert [g["separated"] for g in goals] == [False, False, False, False]
    assert goals[1]["half_width"] == pytest.approx(0.096) and goals[1]["difference"] == pytest.approx(0.089)
    table["goals"] = goals
    md = render_markdown(table)
    assert "holds by 0.164, more than the larger half-width (0.112), intervals overlap" in md
    assert "holds by 0.089, not more than the larger half-width (0.096)" in md


# ---------------------------------------------------------------------------- SLURM
def test_slurm_jobs_prepare_then_arms_then_table(capsys, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    assert main(["experiment", "slurm", str(GPU), f"out_dir={out}", "--dry-run", "--partition", "gpu"]) == 0
    text = capsys.readouterr().out
    jobs = text.split("# ======== job ")[1:]
    assert [j.split("\n", 1)[0] for j in jobs] == ["prepare", "helpful-ppo (after prepare)", "human-ppo (after prepare)",
                                                   "rbr-ppo (after prepare)", "table (after helpful-ppo, human-ppo, rbr-ppo)"]
    prepare, *arms, table = [j.split("\n", 1)[1] for j in jobs]
    assert f"experiment run {GPU} out_dir={out} --stage prepare" in prepare and "#SBATCH --partition=gpu\n" in prepare
    assert "#SBATCH --gpus-per-node=8\n" in prepare and "--gpus-per-node" not in table
    assert "--stage table" in table
    for arm, script in zip(("helpful-ppo", "human-ppo", "rbr-ppo"), arms):
        assert f"-m rbr_rlhf.cli train {out / 'recipes' / arm}.yaml" in script and "#SBATCH --requeue\n" in script
        assert f"#SBATCH --job-name=llama3-8b-gpu-{arm}\n" in script
    assert "rbr_rlhf.cli grader serve" not in arms[0]  # Helpful-PPO has no RBR: no grader service
    for i, script in enumerate((prepare, *arms, table)):
        path = tmp_path / f"{i}.sbatch"
        path.write_text(script)
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0

    # submitted: each job waits for the ones before it (a fake sbatch records its arguments)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    (bin_dir / "sbatch").write_text(f"#!/bin/bash\necho \"$@\" >> {log}\nwc -l < {log}\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert main(["experiment", "slurm", str(GPU), f"out_dir={out}"]) == 0
    calls = log.read_text().splitlines()
    assert calls[0] == f"--parsable {out}/launch/prepare.sbatch"
    assert calls[1:4] == [f"--parsable --dependency=afterok:1 {out}/launch/{a}.sbatch" for a in ("helpful-ppo", "human-ppo", "rbr-ppo")]
    assert calls[4] == f"--parsable --dependency=afterok:2:3:4 {out}/launch/table.sbatch"
