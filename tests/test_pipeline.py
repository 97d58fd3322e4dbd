"""The RBR data pipeline: checklists, stage caches, prompt sets, `rbr build` resume (with stand-in models),
and one end-to-end build on the real small models (slow)."""

import json
import random

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


class CountingWriter:
    """Stand-in writer: reads the instructions and writes text the keyword grader will grade."""

    def __init__(self):
        self.calls = 0

    def generate(self, conversations, temperature, max_tokens, seed):
        self.calls += 1
        return [f"reply to: {c[-1]['content'][-80:]}" for c in conversations]

    def close(self):
        pass


def test_build_rbr_resumes_from_its_caches(tmp_path, gold_dir, default_rules):
    from rbr_rlhf.pipeline.build import BuildConfig, BuildRBR
    from test_grader_service import KeywordGrader

    cfg = BuildConfig(prompts=str(gold_dir / "train.jsonl"), out=str(tmp_path / "b"), grader="labels",
                      limit_prompts=6, max_rounds=2, batch_size=4)
    writer = CountingWriter()
    build = BuildRBR(cfg, default_rules, writer=writer)
    build._grader = KeywordGrader()
    report = build.run()
    assert report["prompts"] == 6 and report["candidates"] >= 30
    assert (tmp_path / "b" / "report.md").exists() and (tmp_path / "b" / "rbr_weights.json").exists()
    first_calls = writer.calls

    # A crash mid-grading: the last graded batch is lost and a line is torn. Resuming regrades only
    # what was lost and generates nothing again.
    graded = tmp_path / "b" / "graded.jsonl"
    lines = graded.read_text().splitlines()
    graded.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:20])
    grader = KeywordGrader()
    again = BuildRBR(cfg, default_rules, writer=writer)
    again._grader = grader
    again.run()
    assert writer.calls == first_calls
    assert sum(grader.batches) == 3
    assert len(graded.read_text().splitlines()) == len(lines)

    # Changing what the cache depends on is refused unless forced.
    with pytest.raises(ValueError, match="different"):
        BuildRBR(BuildConfig(**{**cfg.__dict__, "max_tokens": 12}), default_rules)


@pytest.mark.slow
def test_build_rbr_end_to_end_on_real_models(tmp_path, gold_dir, default_rules, tiny_assets, capsys):
    """`rbr build` through the CLI: SmolLM2 writes, a classifier grader grades, a small RM scores; the
    weights load in the grader service."""
    from rbr_rlhf.cli import main
    from rbr_rlhf.rbr import RBRWeights
    from rbr_rlhf.service.app import create_app

    # The grader (gold train rows, `grader train-classifier --lm none`) and the RM (`rm train` on HH-RLHF
    # pairs) are the ones the session's PPO tests use: tiny_assets trains them through the same CLI
    # commands, and the suite builds it anyway. Training a second, slightly smaller pair here cost a
    # MiniLM featurization, the heads' CV search and an RM epoch, and proved nothing more about `rbr build`.
    grader, rm = tiny_assets / "grader", tiny_assets / "rm"
    capsys.readouterr()
    out = tmp_path / "build"
    assert main(["rbr", "build", "--prompts", str(gold_dir / "train.jsonl"), "--grader", f"classifier:{grader}",
                 "--rm", str(rm), "--out", str(out), "--limit-prompts", "4", "--max-tokens", "24",
                 "--max-rounds", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["prompts"] == 4 and "failed_completion_types" in summary
    report = (out / "report.md").read_text()
    assert "Yield per completion type" in report and "all ranked pairs" in report and "RM only" in report
    rows = [json.loads(l) for l in (out / "comparisons.jsonl").read_text().splitlines()]
    assert all("rm_score" in r and r["completion_class"] for r in rows)
    # sft.jsonl imitates only completions written to be ideal and graded ideal.
    sft = [json.loads(l) for l in (out / "sft.jsonl").read_text().splitlines()]
    assert {(s["prompt_id"], s["messages"][-1]["content"]) for s in sft} == {
        (r["prompt_id"], r["completion"]) for r in rows if r["completion_class"] == r["intended_class"] == "ideal"}
    weights = RBRWeights.load(out / "rbr_weights.json", default_rules)
    create_app(default_rules, None, weights)  # the weights load in the grader service


def test_keep_intended_or_graded_decides_the_comparison_class(tmp_path, default_rules):
    from rbr_rlhf.pipeline.build import BuildConfig, BuildRBR

    on_target = {"intended_class": "ideal", "graded_class": "ideal", "kept": True}
    off_target = {"intended_class": "ideal", "graded_class": "unacceptable", "kept": False}
    empty = {"intended_class": "ideal", "graded_class": "ideal", "kept": False}  # matched, but no text
    no_class = {"intended_class": "ideal", "graded_class": None, "kept": False}
    paper = BuildRBR(BuildConfig(prompts="p", out=str(tmp_path / "a"), grader="g"), default_rules)
    assert [paper.label(g) for g in (on_target, off_target, empty, no_class)] == ["ideal", None, None, None]
    graded = BuildRBR(BuildConfig(prompts="p", out=str(tmp_path / "b"), grader="g", keep="graded"), default_rules)
    assert [graded.label(g) for g in (on_target, off_target, empty, no_class)] == ["ideal", "unacceptable", None, None]
    # A candidate written as the worst class (disallowed) and graded better is dropped, not kept as better.
    graded._worst_class = {"p1": "disallowed"}
    harmful_read_as_ideal = {"prompt_id": "p1", "intended_class": "disallowed", "graded_class": "ideal", "kept": False}
    harmful_seen = {"prompt_id": "p1", "intended_class": "disallowed", "graded_class": "disallowed", "kept": True}
    assert graded.label(harmful_read_as_ideal) is None and graded.label(harmful_seen) == "disallowed"
    with pytest.raises(ValueError, match="keep must be 'intended' or 'graded'"):
        BuildConfig(prompts="p", out=str(tmp_path / "c"), grader="g", keep="all")


class RecordingWriter(CountingWriter):
    """Stand-in writer that keeps every conversation it was asked to continue."""

    def __init__(self):
        super().__init__()
        self.asked = []

    def generate(self, conversations, temperature, max_tokens, seed):
        self.asked += [list(c) for c in conversations]
        return [" and then some more words." for _ in conversations]


def test_build_rbr_writer_strategies(tmp_path, gold_dir, default_rules):
    """With --openings default every class is written by its strategy: fixed texts are not generated,
    openings are continued as an open assistant turn, illogical answers come from another prompt."""
    from rbr_rlhf.pipeline.build import BuildConfig, BuildRBR
    from test_grader_service import KeywordGrader

    cfg = BuildConfig(prompts=str(gold_dir / "train.jsonl"), out=str(tmp_path / "b"), grader="labels",
                      limit_prompts=8, max_rounds=1, batch_size=8, samples_per_class=2, openings="default",
                      keep="graded")
    writer = RecordingWriter()
    build = BuildRBR(cfg, default_rules, writer=writer)
    build._grader = KeywordGrader()
    build.run()
    cands = [json.loads(l) for l in (tmp_path / "b" / "candidates.jsonl").read_text().splitlines()]
    prompts = {p["prompt_id"]: p for p in (json.loads(l) for l in (tmp_path / "b" / "prompts.jsonl").read_text().splitlines())}
    kinds = {c["strategy"].split(":")[0] for c in cands}
    assert {"say", "start", "free"} <= kinds and "instructions" not in kinds
    for c in cands:
        if c["strategy"].startswith("say:"):
            assert c["completion"] and "some more words" not in c["completion"]
        if c["strategy"].startswith("start:"):
            assert c["completion"].endswith("and then some more words.")
    # Openings reach the writer as an unfinished assistant turn; free answers as the bare conversation.
    assert any(a[-1]["role"] == "assistant" for a in writer.asked)
    assert all(a[-1]["role"] in ("user", "assistant") and "[Instructions" not in a[-1]["content"] for a in writer.asked)
    # An off-topic (other_prompt) candidate is the writer's answer to another prompt of the set.
    from rbr_rlhf.pipeline.openings import Strategy

    class Fixed:
        def pick(self, response_type, cls, rng):
            return Strategy("other_prompt")

    # It answers a prompt of a response type the rule set complies with, never one of the prompt's own
    # type (a second self-harm request would be answered on topic).
    by_conv = {json.dumps(q["conversation"]): q for q in prompts.values()}
    refusing = [q for q in prompts.values() if q["response_type"] != "comply"]
    assert refusing and any(q["response_type"] == "comply" for q in prompts.values())
    for p in refusing:
        for k in range(5):
            plan = build._plan(p, "illogical", f"k{k}", Fixed())
            assert plan["strategy"] == "other_prompt"
            assert by_conv[json.dumps(plan["messages"])]["response_type"] == "comply"
    # Every class of every response type present was attempted.
    attempted = {(prompts[c["prompt_id"]]["response_type"], c["intended_class"]) for c in cands}
    for rt in {p["response_type"] for p in prompts.values()}:
        assert {cls for r, cls in attempted if r == rt} == set(default_rules.response_types[rt].class_names)
