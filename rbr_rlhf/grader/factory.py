"""Build a grader from a command-line spec.

Grader specs (``--grader G``):

* ``classifier:DIR`` or just ``DIR`` holding a trained classifier grader (``grader train-classifier``);
* ``llm:MODEL``: the few-shot LLM grader on a local transformers model (MODEL: a built-in alias such as
  ``smollm2``, a local directory, or a hub name);
* ``openai:MODEL@URL``: the LLM grader on any OpenAI-compatible completions endpoint that returns
  logprobs, e.g. ``openai:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1`` for a ``vllm serve``
  process. The bearer token comes from ``$RBR_GRADER_API_KEY`` when set;
* ``labels``: an oracle that reads human labels from each row's ``propositions`` (for fitting and
  testing with labelled data, never for RL).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..rules.ruleset import RuleSet
from .base import Grader


def build_grader(spec: str, rules: RuleSet, **options) -> Grader:
    kind, _, rest = spec.partition(":")
    if not rest and Path(spec).is_dir():
        kind, rest = "classifier", spec
    if kind == "classifier":
        from .classifier import ClassifierGrader

        return ClassifierGrader.load(rest, rules)
    if kind == "llm":
        from .llm import LLMGrader, TransformersBackend

        return LLMGrader(rules, TransformersBackend(rest or "smollm2", **options))
    if kind == "openai":
        from .llm import LLMGrader, OpenAICompletionsBackend

        from ..endpoints import parse_openai_spec

        try:
            model, url = parse_openai_spec(spec)
        except ValueError:
            raise ValueError(f"grader spec {spec!r}: expected openai:MODEL@http://HOST:PORT/v1") from None
        return LLMGrader(rules, OpenAICompletionsBackend(url, model, api_key=os.environ.get("RBR_GRADER_API_KEY"), **options))
    if kind == "labels":
        from .labels import LabelGrader

        return LabelGrader()
    raise ValueError(
        f"unknown grader spec {spec!r}: use classifier:DIR, llm:MODEL, openai:MODEL@URL or labels"
    )
