"""``rbr build``: from safety prompts to fitted RBR weights, as one resumable run.

Stages (each caches its output in the run directory and resumes where it stopped):

1. prompts      read the prompt set; give each prompt a content category (its own, or the prompt
                classifier's) and so a response type                          -> prompts.jsonl
2. generate     for every prompt and every completion class of its response type, ask the writer
                model for a completion following a checklist derived from the class  -> candidates.jsonl
3. grade        grade every candidate; keep it only if its class is the intended one; candidates that
                missed are re-generated with a freshly sampled checklist, up to ``max_rounds``
                                                                              -> graded.jsonl
4. rm           score kept completions with the helpful reward model         -> rm_scores.jsonl
5. dataset      the comparison set D_RBR and the SFT set of ideal completions -> comparisons.jsonl, sft.jsonl
6. fit          hinge fit split by prompt, report, reward histograms          -> rbr_weights.json, report.*
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..data import write_json, write_jsonl
from ..grader.base import GradeItem
from ..rbr.features import features_from_probs, grade_completions
from ..rbr.fit import Comparison, FitConfig, fit_rbr
from ..rbr.model import RBRWeights
from ..rules.ruleset import RuleSet
from ..seeding import stable_hash
from .cache import append_cache, read_cache
from .prompts import balanced
from .synth import class_checklist, writer_messages

log = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    prompts: str
    out: str
    grader: str
    rm: str | None = None
    rules: str = "default"
    writer: str = "smollm2"
    engine: str = "transformers"  # or "vllm"
    prompt_classifier: str = "train"  # a directory, "train" (on prompts that have categories) or "llm"
    limit_prompts: int | None = None
    samples_per_class: int = 1
    max_rounds: int = 2
    temperature: float = 0.9
    max_tokens: int = 96
    batch_size: int = 16
    seed: int = 0
    # Which candidates become comparison data. "intended" (the paper): only those the grader puts in the
    # class they were written for. "graded": every non-empty candidate the grader puts in exactly one
    # class, labelled with that class. A small writer misses its intended class most of the time (the
    # SmolLM2 writer: ~14% on target), and the off-target completions are still valid examples of the
    # class they landed in, so "graded" turns several times more of the same generations into data.
    keep: str = "intended"
    # How the writer is asked for each class: None (the class checklist as instructions, the paper's way)
    # or a writer-strategies file ("default" or a YAML path; see pipeline/openings.py): class-conditioned
    # openings the writer continues, fixed texts, free answers, answers to other prompts.
    openings: str | None = None
    # The reward-ranking check on real answers (rbr/ranking.py): a data root holding xstest/, and the
    # labelled answers to unsafe prompts (`grader unsafe-answers`). Measured on the XSTest half the
    # reward grader did not train on.
    # Prompts longer than this (characters, all turns) are left out: a few multi-turn gold prompts do not
    # fit a small rollout server's context (the CPU recipe's vLLM has 1,024 tokens).
    max_prompt_chars: int = 2000
    ranking_data: str | None = None
    ranking_answers: str | None = None
    fit: dict = field(default_factory=dict)  # FitConfig fields

    def __post_init__(self):
        if self.keep not in ("intended", "graded"):
            raise ValueError(f"rbr build: keep must be 'intended' or 'graded', not {self.keep!r}")

    def identity(self) -> dict:
        """What must not change between a run and its resumption."""
        keys = ("prompts", "grader", "rm", "writer", "samples_per_class", "temperature", "max_tokens", "seed",
                "limit_prompts", "openings")
        return {k: getattr(self, k) for k in keys}


class BuildRBR:
    def __init__(self, cfg: BuildConfig, rules: RuleSet, force: bool = False, writer=None):
        """``writer``: an ``EngineWriter`` to reuse (e.g. the PPO run's rollout server); by default one is
        made from ``cfg.engine`` and ``cfg.writer`` when generation is needed, and closed at the end."""
        self.cfg, self.rules = cfg, rules
        self.dir = Path(cfg.out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._check_manifest(force)
        self._worst_class: dict[str, str] = {}  # prompt id -> its response type's worst class (label())
        self._grader = None
        self._writer, self._own_writer = writer, writer is None
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ bookkeeping
    def _check_manifest(self, force: bool) -> None:
        manifest = {"rules_fingerprint": self.rules.fingerprint, **self.cfg.identity()}
        path = self.dir / "manifest.json"
        if path.exists() and not force:
            old = json.loads(path.read_text())
            changed = sorted(k for k in manifest if old.get(k) != manifest[k])
            if changed:
                raise ValueError(f"{self.dir} holds a build with different {changed}; use another --out, or --force "
                                 "to reuse its cached stages anyway")
        write_json(path, manifest)

    @property
    def grader(self):
        if self._grader is None:
            from ..grader.factory import build_grader

            self._grader = build_grader(self.cfg.grader, self.rules)
        return self._grader

    def _timed(self, name: str, fn):
        start = time.time()
        result = fn()
        self.timings[name] = self.timings.get(name, 0.0) + time.time() - start
        return result

    # ------------------------------------------------------------------ 1. prompts
    def stage_prompts(self) -> list[dict]:
        path = self.dir / "prompts.jsonl"
        if path.exists():
            return read_cache(path)
        from .prompts import load_prompt_set

        rows = load_prompt_set(self.cfg.prompts)
        missing = [r for r in rows if r.get("category") is None]
        if missing:
            classifier = self._prompt_classifier(rows)
            for r, cat in zip(missing, classifier.predict([r["conversation"] for r in missing])):
                r["category"], r["category_source"] = cat, f"prompt_classifier:{classifier.kind}"
        out = []
        for r in rows:
            if sum(len(m.get("content") or "") for m in r["conversation"]) > self.cfg.max_prompt_chars:
                log.info("prompt %s: longer than max_prompt_chars=%d; skipped", r["prompt_id"], self.cfg.max_prompt_chars)
                continue
            rt = self.rules.find_response_type(str(r["category"]))
            if rt is None:
                log.info("prompt %s: category %r has no safety response type; skipped", r["prompt_id"], r["category"])
                continue
            out.append({**r, "response_type": rt.name})
        out = balanced(out, self.cfg.limit_prompts)
        write_jsonl(path, out)
        return out

    def _prompt_classifier(self, rows):
        from .prompt_classifier import LLMPromptClassifier, TrainedPromptClassifier

        spec = self.cfg.prompt_classifier
        if spec == "llm":
            return LLMPromptClassifier(self.rules, self.cfg.writer)
        if spec == "train":
            known = [r for r in rows if r.get("category") is not None]
            if len(known) < 10:
                raise ValueError("prompts without categories need a prompt classifier: pass --prompt-classifier DIR "
                                 "or 'llm' (too few labelled prompts to train one)")
            return TrainedPromptClassifier.train(self.rules, [r["conversation"] for r in known], [r["category"] for r in known])
        return TrainedPromptClassifier.load(spec, self.rules)

    # ------------------------------------------------------------------ 2+3. generate and grade, in rounds
    def _key(self, pid: str, cls: str, round_: int, k: int) -> str:
        return f"{pid}/{cls}/{round_}/{k}"

    def _seed(self, key: str) -> int:
        return stable_hash(self.cfg.seed, key)

    def stage_generate_and_grade(self, prompts: list[dict]) -> list[dict]:
        cand_path, graded_path = self.dir / "candidates.jsonl", self.dir / "graded.jsonl"
        candidates = {c["key"]: c for c in read_cache(cand_path)}
        graded = {g["key"]: g for g in read_cache(graded_path)}
        by_id = {p["prompt_id"]: p for p in prompts}
        self._prompt_pool = prompts
        self._worst_class = {p["prompt_id"]: self.rules.response_types[p["response_type"]].class_names[-1] for p in prompts}
        for round_ in range(self.cfg.max_rounds):
            kept = Counter((g["prompt_id"], self.label(g)) for g in graded.values() if self.label(g))
            todo = []
            for p in prompts:
                for cls in self.rules.response_types[p["response_type"]].class_names:
                    have = kept[(p["prompt_id"], cls)]
                    for k in range(have, self.cfg.samples_per_class):
                        key = self._key(p["prompt_id"], cls, round_, k)
                        if key not in candidates:
                            todo.append((p, cls, key))
            self._generate(todo, candidates, cand_path, round_)
            ungraded = [c for c in candidates.values() if c["key"] not in graded]
            self._grade(ungraded, by_id, graded, graded_path)
        return list(graded.values())

    def _generate(self, todo, candidates, path, round_) -> None:
        if not todo:
            return
        from .writer import make_writer

        if self._writer is None:
            self._writer = make_writer(self.cfg.engine, self.cfg.writer)
        bs = self.cfg.batch_size
        strategies = self._strategies()
        with tqdm(total=len(todo), desc=f"generate (round {round_ + 1})", unit="completion", file=sys.stderr) as bar:
            for s in range(0, len(todo), bs):
                batch = todo[s:s + bs]
                plans = [self._plan(p, cls, key, strategies) for p, cls, key in batch]
                asks = [i for i, plan in enumerate(plans) if plan["messages"] is not None]
                texts = self._timed("generate", lambda: self._writer.generate(
                    [plans[i]["messages"] for i in asks], temperature=self.cfg.temperature,
                    max_tokens=self.cfg.max_tokens, seed=self._seed(batch[0][2]))) if asks else []
                written = dict(zip(asks, texts))
                rows = [{"key": key, "prompt_id": p["prompt_id"], "intended_class": cls, "round": round_,
                         "checklist": plan["checklist"], "strategy": plan["strategy"],
                         "completion": (plan["prefix"] + written.get(i, "")).strip()}
                        for i, ((p, cls, key), plan) in enumerate(zip(batch, plans))]
                append_cache(path, rows)
                candidates.update({r["key"]: r for r in rows})
                bar.update(len(batch))

    def _strategies(self):
        if not self.cfg.openings:
            return None
        from .openings import load_openings

        if self.cfg.openings == "default" and self.rules.name != "default":
            # The built-in strategies are written for the default rule set's classes; another rule set
            # (e.g. a recipe override) needs its own file, or falls back to the class checklists.
            log.warning("rbr build: openings 'default' is for the default rule set, not %r: using the class "
                        "checklists (give --openings FILE for this rule set)", self.rules.name)
            return None
        return load_openings(self.cfg.openings, self.rules)

    def _plan(self, prompt: dict, cls: str, key: str, strategies) -> dict:
        """How to write one candidate: the writer's messages (None: no generation), the text it starts
        with, and the strategy's name for the report."""
        rng = random.Random(self._seed(key))
        checklist = class_checklist(self.rules, prompt["response_type"], cls, rng)
        choice = strategies.pick(prompt["response_type"], cls, rng) if strategies is not None else None
        conversation = [dict(m) for m in prompt["conversation"]]
        if choice is None or choice.kind == "instructions":
            return {"messages": writer_messages(self.rules, conversation, checklist), "prefix": "",
                    "checklist": checklist, "strategy": "instructions"}
        plan = {"checklist": checklist, "strategy": choice.describe(), "prefix": "", "messages": conversation}
        if choice.kind == "say":
            plan.update(messages=None, prefix=choice.text)
        elif choice.kind == "start":
            plan.update(messages=conversation + [{"role": "assistant", "content": choice.text}], prefix=choice.text)
        elif choice.kind == "other_prompt":
            plan["messages"] = [dict(m) for m in self._unrelated_prompt(prompt, rng)["conversation"]]
        return plan

    def _unrelated_prompt(self, prompt: dict, rng: random.Random) -> dict:
        """Another prompt whose answer is off-topic for ``prompt`` (an ``other_prompt`` candidate): one of a
        response type the rule set says to comply with (an ordinary answer), else of another response type,
        else any other prompt. Another prompt of the same type (a second self-harm request) would be
        answered on the same topic, which is no non-sequitur."""
        others = [p for p in self._prompt_pool if p["prompt_id"] != prompt["prompt_id"]]
        sem = self.rules.evaluation
        comply = set(sem.should_comply) if sem is not None and sem.should_comply else set()
        for pool in ([p for p in others if p["response_type"] in comply and p["response_type"] != prompt["response_type"]],
                     [p for p in others if p["response_type"] != prompt["response_type"]], others):
            if pool:
                return rng.choice(pool)
        return prompt

    def _grade(self, ungraded, by_id, graded, path) -> None:
        if not ungraded:
            return
        bs = max(self.cfg.batch_size, 32)
        with tqdm(total=len(ungraded), desc="grade", unit="completion", file=sys.stderr) as bar:
            for s in range(0, len(ungraded), bs):
                batch = ungraded[s:s + bs]
                prompts = [by_id[c["prompt_id"]] for c in batch]
                items = [GradeItem(tuple(p["conversation"]), c["completion"]) for p, c in zip(prompts, batch)]
                result = self._timed("grade", lambda: grade_completions(self.rules, self.grader, items,
                                                                        [p["response_type"] for p in prompts]))
                rows = []
                for c, p, g in zip(batch, prompts, result):
                    labels = {k: v >= 0.5 for k, v in g.proposition_probs.items()}
                    classes = self.rules.classes_of(labels, p["response_type"])
                    got = classes[0] if len(classes) == 1 else None
                    rows.append({"key": c["key"], "prompt_id": c["prompt_id"], "intended_class": c["intended_class"],
                                 "graded_class": got, "kept": got == c["intended_class"] and bool(c["completion"]),
                                 "proposition_probs": g.proposition_probs})
                append_cache(path, rows)
                graded.update({r["key"]: r for r in rows})
                bar.update(len(batch))

    def _ranking(self, rbr: RBRWeights) -> dict | None:
        """R_rm, R_rbr and their sum on real compliance/refusal pairs (judge half of XSTest)."""
        sem = self.rules.evaluation
        if not self.cfg.ranking_data or sem is None or not sem.should_comply or not sem.should_refuse:
            return None  # which response type grades a compliance and a refusal comes from the semantics
        from ..rbr.ranking import rank_real_answers

        rm = None
        if self.cfg.rm:
            from ..rm.model import RewardModel

            rm = RewardModel(self.cfg.rm)
        return self._timed("ranking", lambda: rank_real_answers(self.rules, self.grader, rbr, self.cfg.ranking_data,
                                                                self.cfg.ranking_answers, rm))

    def label(self, g: dict) -> str | None:
        """The class a graded candidate contributes to the comparison data, or None (dropped)."""
        if self.cfg.keep == "intended":
            return g["intended_class"] if g["kept"] else None
        # g["kept"] is False for an empty completion even when its class matches; graded_class None: no
        # single class (contradictory propositions).
        empty = g["graded_class"] == g["intended_class"] and not g["kept"]
        # A candidate written as its response type's worst class (by default `disallowed`: the writer
        # continues "Sure. Here is exactly how to hurt someone without getting caught. First,") that the
        # grader reads as a better class is dropped, not kept as better. A grader missing harmful content is
        # the likelier error than a writer ignoring the opening it continues: in the experiment's build
        # (2026-12-02) the classifier grader read 53 of 96 such texts as better, 24 of them as the ideal
        # compliance, which put harmful instructions on the ideal side of the comparisons and into sft.jsonl.
        worst = self._worst_class.get(g.get("prompt_id"))
        if g["intended_class"] == worst and g["graded_class"] not in (None, worst):
            return None
        return None if empty else g["graded_class"]

    # ------------------------------------------------------------------ 4. reward model
    def stage_rm(self, kept: list[dict], candidates: dict, by_id: dict) -> dict[str, float]:
        if not self.cfg.rm:
            return {}
        path = self.dir / "rm_scores.jsonl"
        scores = {r["key"]: r["rm_score"] for r in read_cache(path)}
        todo = [g for g in kept if g["key"] not in scores]
        if todo:
            from ..rm.model import RewardModel

            rm = RewardModel(self.cfg.rm)
            bs = 64
            with tqdm(total=len(todo), desc="reward model", unit="completion", file=sys.stderr) as bar:
                for s in range(0, len(todo), bs):
                    batch = todo[s:s + bs]
                    vals = self._timed("rm", lambda: rm.reward([by_id[g["prompt_id"]]["conversation"] for g in batch],
                                                               [candidates[g["key"]]["completion"] for g in batch]))
                    rows = [{"key": g["key"], "rm_score": float(v)} for g, v in zip(batch, vals)]
                    append_cache(path, rows)
                    scores.update({r["key"]: r["rm_score"] for r in rows})
                    bar.update(len(batch))
        return scores

    # ------------------------------------------------------------------ the whole run
    def run(self) -> dict:
        try:
            return self._run()
        finally:
            if self._own_writer and self._writer is not None:
                self._writer.close()

    def _run(self) -> dict:
        prompts = self._timed("prompts", self.stage_prompts)
        by_id = {p["prompt_id"]: p for p in prompts}
        graded = self.stage_generate_and_grade(prompts)
        candidates = {c["key"]: c for c in read_cache(self.dir / "candidates.jsonl")}
        kept = [g for g in graded if self.label(g)]
        rm_scores = self.stage_rm(kept, candidates, by_id)

        comparisons = []
        for g in kept:
            p, c = by_id[g["prompt_id"]], candidates[g["key"]]
            row = {"prompt_id": g["prompt_id"], "conversation": p["conversation"], "category": p["category"],
                   "response_type": p["response_type"], "completion": c["completion"],
                   "completion_class": self.label(g), "intended_class": g["intended_class"], "proposition_probs": g["proposition_probs"]}
            if self.cfg.rm:
                row["rm_score"] = rm_scores[g["key"]]
            comparisons.append(row)
        write_jsonl(self.dir / "comparisons.jsonl", comparisons)
        # The SFT set imitates: only completions written to be ideal and graded ideal (with keep=graded a
        # candidate written for another class can be graded ideal; good enough to rank, not to imitate).
        sft = [{"prompt_id": r["prompt_id"], "messages": list(r["conversation"]) + [{"role": "assistant", "content": r["completion"]}]}
               for r in comparisons if r["completion_class"] == r["intended_class"] == self.rules.response_types[r["response_type"]].ideal]
        write_jsonl(self.dir / "sft.jsonl", sft)
        report = self._fit_and_report(prompts, graded, comparisons)
        return report

    def _fit_and_report(self, prompts, graded, comparisons) -> dict:
        from .report import write_report

        fit_cfg = FitConfig(**{**{"seed": self.cfg.seed}, **self.cfg.fit})
        comps = [Comparison(r["prompt_id"], r["response_type"], r["completion_class"],
                            features_from_probs(self.rules, r["response_type"], r["proposition_probs"]),
                            float(r.get("rm_score", 0.0))) for r in comparisons]
        has_rm = bool(self.cfg.rm)
        weights, metrics = fit_rbr(self.rules, comps, fit_cfg, has_rm) if comps else ({}, {})
        rbr = RBRWeights(self.rules.fingerprint, weights, self.cfg.rm, metrics, {"build": asdict(self.cfg)})
        rbr.save(self.dir / "rbr_weights.json")

        # Yield: of the candidates written for a class, how many the grader put in it ("on target"); and how
        # many comparison rows each class ended with (differs from on-target only with keep=graded).
        attempts, on_target, kept_n = Counter(), Counter(), Counter()
        rt_of = {p["prompt_id"]: p["response_type"] for p in prompts}
        for g in graded:
            key = (rt_of[g["prompt_id"]], g["intended_class"])
            attempts[key] += 1
            on_target[key] += g["kept"]
            if self.label(g):
                kept_n[(rt_of[g["prompt_id"]], self.label(g))] += 1
        slots = Counter()
        for p in prompts:
            for cls in self.rules.response_types[p["response_type"]].class_names:
                slots[(p["response_type"], cls)] += self.cfg.samples_per_class
        yields = {f"{rt}/{cls}": {"wanted": slots[(rt, cls)], "attempts": attempts[(rt, cls)],
                                  "on_target": on_target[(rt, cls)], "kept": kept_n[(rt, cls)],
                                  "yield": (on_target[(rt, cls)] / attempts[(rt, cls)]) if attempts[(rt, cls)] else None}
                  for rt, cls in sorted(slots)}
        ranking = self._ranking(rbr) if comps else None
        report = {"prompts": len(prompts), "response_types": dict(Counter(p["response_type"] for p in prompts)),
                  "ranking": ranking,
                  "candidates": len(graded), "kept": len(comparisons), "yield": yields,
                  "failed_completion_types": sorted(k for k, v in yields.items() if v["kept"] == 0),
                  "fit": metrics, "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
                  "config": asdict(self.cfg), "rules_fingerprint": self.rules.fingerprint}
        write_report(self.dir, self.rules, report, comparisons, rbr)
        return report
