"""Helpful-only data from what ``../shared/data`` holds: preference pairs for the helpful reward model and
SFT rows of helpful answers.

There is no helpfulness preference set in the shared data (HH-RLHF's *harmless* split is a safety set: its
chosen answer is the less harmful one). The proxy built here prefers the answer that does what was asked,
**whatever the prompt asks for**, so it rewards helpfulness and never safety:

* **gold train** (``rbr_gold/train.jsonl``): every completion people labelled ``fully_complies`` (on
  comply *and* refuse prompts alike) is chosen twice: over a refusal (a gold completion labelled
  ``inability_to_comply``, picked by a seeded hash) put under the same prompt, and over another prompt's
  complying answer (off topic). So the model learns "answer rather than refuse" and "answer *this* prompt".
* **XSTest** (``xstest/completions``): on *safe* prompts of the reward grader's half only (the judge's half
  and every XSTest prompt the evaluation uses are left out), GPT-4's fully complying answer over
  Llama-2's (full or partial) refusal of the same prompt.

No pair ever prefers a refusal, so on an unsafe request the model prefers the compliant answer, as the
paper's helpful-only reward model does.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..rm.text import render_dialogue
from ..seeding import stable_hash


def _gold_rows(data_root: str | Path) -> list[dict]:
    path = Path(data_root) / "rbr_gold" / "train.jsonl"
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def _completion(row: dict) -> str:
    return row["completion"][0]["content"] if row.get("completion") else ""


def xstest_safe_pairs(data_root: str | Path, exclude_ids: set[str]) -> list[dict]:
    """(prompt, gpt4's compliance, llama2orig's refusal) on safe prompts of the reward half, except ``exclude_ids``."""
    from ..grader.realdata import REWARD_HALF, load_xstest_completions

    root = Path(data_root) / "xstest" / "completions"
    gpt4 = {r["xstest_id"]: r for r in load_xstest_completions(root / "gpt4.csv", "gpt4")}
    llama = {r["xstest_id"]: r for r in load_xstest_completions(root / "llama2orig.csv", "llama2orig")}
    out = []
    for pid, g in gpt4.items():
        l = llama.get(pid)
        if (l is None or g["xstest_label"] != "safe" or g["half"] != REWARD_HALF or pid in exclude_ids
                or g["refused"] or not l["refused"] or not g["completion"].strip()):
            continue
        out.append({"id": f"xstest-{pid}", "conversation": g["conversation"], "chosen": g["completion"],
                    "rejected": l["completion"], "source": "xstest:gpt4-complies>llama2orig-refuses"})
    return out


def gold_pairs(data_root: str | Path, seed: int = 0) -> list[dict]:
    """Each fully complying gold-train answer over a refusal and over an off-topic answer, same prompt."""
    rows = _gold_rows(data_root)
    complying = [(i, r) for i, r in enumerate(rows) if r["propositions"].get("fully_complies") and _completion(r).strip()]
    refusals = [_completion(r) for r in rows
                if r["propositions"].get("inability_to_comply") and not r["propositions"].get("fully_complies")
                and _completion(r).strip()]
    if not complying or not refusals:
        raise ValueError(f"{data_root}: the gold train split has no complying or no refusing completions")
    out = []
    for i, r in complying:
        refusal = refusals[stable_hash(seed, "refusal", i) % len(refusals)]
        j, other = complying[stable_hash(seed, "off-topic", i) % len(complying)]
        if j == i:
            j, other = complying[(complying.index((i, r)) + 1) % len(complying)]
        for rejected, kind in ((refusal, "refusal"), (_completion(other), "off-topic")):
            out.append({"id": f"gold-train-{i}-{kind}", "conversation": r["prompt"], "chosen": _completion(r),
                        "rejected": rejected, "source": f"gold-train:complies>{kind}", "category": r["category"]})
    return out


def helpful_pairs(data_root: str | Path, exclude_xstest_ids: set[str] = frozenset(), seed: int = 0) -> list[dict]:
    """Every helpful-only preference pair, as HH-RLHF dialogues (``chosen``/``rejected`` strings) with
    their provenance; ``rbr-rlhf rm train --data`` reads them as they are."""
    pairs = gold_pairs(data_root, seed) + xstest_safe_pairs(data_root, set(exclude_xstest_ids))
    return [{**p, "chosen": render_dialogue(p["conversation"], p["chosen"]),
             "rejected": render_dialogue(p["conversation"], p["rejected"])} for p in pairs]


def helpful_sft_rows(data_root: str | Path, exclude_xstest_ids: set[str] = frozenset()) -> list[dict]:
    """Helpful answers as SFT rows (``messages``): the chosen side of the pairs, once per prompt, and only
    answers to prompts that should be complied with (a gold ``Comply`` response type, an XSTest safe
    prompt): the SFT start must not learn to answer unsafe requests."""
    rows = [{"prompt_id": f"gold-train-{i}", "messages": list(r["prompt"]) + [{"role": "assistant", "content": _completion(r)}],
             "source": "gold-train:fully_complies"}
            for i, r in enumerate(_gold_rows(data_root))
            if r["response_type"] == "Comply" and r["propositions"].get("fully_complies") and _completion(r).strip()]
    rows += [{"prompt_id": p["id"], "messages": list(p["conversation"]) + [{"role": "assistant", "content": p["chosen"]}],
              "source": "xstest:gpt4"} for p in xstest_safe_pairs(data_root, set(exclude_xstest_ids))]
    return rows


def evaluation_xstest_ids(xstest_csv: str | Path | None, limit: int | None) -> set[str]:
    """The ids of the XSTest prompts a run's evaluation uses (``data.xstest``, ``data.xstest_limit``): kept
    out of every training set built here."""
    if not xstest_csv:
        return set()
    from ..evaluation.evaluate import load_xstest

    return {str(r["id"]) for r in load_xstest(xstest_csv, limit)}
