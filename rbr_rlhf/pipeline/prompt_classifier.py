"""Prompt classifiers: assign a content category (and so a response type) to a conversation.

Two kinds, like the grader's:

* ``TrainedPromptClassifier``: frozen MiniLM embeddings of the conversation and a multinomial logistic
  regression over the rule set's categories, trained on prompts with known categories (the gold prompts
  carry them). Fast, and the CPU default.
* ``LLMPromptClassifier``: a causal LM reads the category descriptions of the rule set and answers with
  a letter; the letter with the highest next-token probability wins. Needs no training data; as good as
  the model.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import write_json
from ..rules.ruleset import RuleSet


def conversation_text(conversation: Sequence[dict] | str, max_chars: int = 2000) -> str:
    """The last user turn first (it decides the category), then the earlier context."""
    if isinstance(conversation, str):
        return conversation[:max_chars]
    users = [m["content"] for m in conversation if m.get("role") == "user"]
    last = users[-1] if users else conversation[-1]["content"]
    context = " ".join(m["content"] for m in conversation[:-1])
    return (last + " || " + context)[:max_chars]


class TrainedPromptClassifier:
    kind = "trained"

    def __init__(self, categories: list[str], coef: np.ndarray, intercept: np.ndarray, rules_fingerprint: str,
                 encoder: str = "minilm"):
        from ..encoders import MeanPoolEncoder

        self.categories, self.coef, self.intercept = categories, coef, intercept
        self.rules_fingerprint = rules_fingerprint
        self.encoder_name = encoder
        self.encoder = MeanPoolEncoder(encoder)

    @classmethod
    def train(cls, rules: RuleSet, conversations: Sequence, categories: Sequence[str], encoder: str = "minilm",
              C: float = 4.0) -> "TrainedPromptClassifier":
        from sklearn.linear_model import LogisticRegression

        from ..encoders import MeanPoolEncoder

        unknown = sorted(set(categories) - set(rules.behavior_policy))
        if unknown:
            raise ValueError(f"categories {unknown} are not in the behavior policy of rule set {rules.name!r}")
        X = MeanPoolEncoder(encoder).encode([conversation_text(c) for c in conversations])
        labels = sorted(set(categories))
        y = np.array([labels.index(c) for c in categories])
        lr = LogisticRegression(C=C, max_iter=2000, class_weight="balanced").fit(X, y)
        coef, intercept = lr.coef_, lr.intercept_
        if len(labels) == 2:  # sklearn keeps one row for binary problems; make it two for a uniform softmax
            coef, intercept = np.vstack([-coef, coef]) / 2, np.array([-intercept[0], intercept[0]]) / 2
        return cls(labels, coef, intercept, rules.fingerprint, encoder)

    def predict_proba(self, conversations: Sequence) -> np.ndarray:
        X = self.encoder.encode([conversation_text(c) for c in conversations])
        logits = X @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, conversations: Sequence) -> list[str]:
        return [self.categories[i] for i in self.predict_proba(conversations).argmax(axis=1)]

    def save(self, out_dir: str | Path) -> None:
        from safetensors.numpy import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"coef": self.coef.astype(np.float32), "intercept": self.intercept.astype(np.float32)},
                  str(out / "prompt_classifier.safetensors"))
        write_json(out / "prompt_classifier.json", {"kind": "trained", "categories": self.categories,
                                                     "rules_fingerprint": self.rules_fingerprint,
                                                     "encoder": self.encoder_name})

    @classmethod
    def load(cls, path: str | Path, rules: RuleSet) -> "TrainedPromptClassifier":
        from safetensors.numpy import load_file

        path = Path(path)
        meta_path = path / "prompt_classifier.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{path} is not a prompt-classifier directory (no prompt_classifier.json)")
        meta = json.loads(meta_path.read_text())
        rules.check_fingerprint(meta["rules_fingerprint"], f"prompt classifier {path}")
        tensors = load_file(str(path / "prompt_classifier.safetensors"))
        return cls(meta["categories"], tensors["coef"].astype(np.float64), tensors["intercept"].astype(np.float64),
                   meta["rules_fingerprint"], meta.get("encoder", "minilm"))


class LLMPromptClassifier:
    """Multiple choice over the rule set's categories, read off one next-token distribution."""

    kind = "llm"

    def __init__(self, rules: RuleSet, model: str = "smollm2"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models import resolve_model

        path = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.categories = list(rules.behavior_policy)
        if len(self.categories) > 26:
            raise ValueError("the LLM prompt classifier handles at most 26 categories")
        self.letters = list(string.ascii_uppercase[: len(self.categories)])
        self.letter_ids = [self.tokenizer.encode(" " + l, add_special_tokens=False)[-1] for l in self.letters]
        options = "\n".join(f"{l}. {rules.category_descriptions.get(c, c)}" for l, c in zip(self.letters, self.categories))
        self.header = ("Classify the user's last message into exactly one category.\n\n"
                       f"Categories:\n{options}\n\n")

    def predict_proba(self, conversations: Sequence) -> np.ndarray:
        import torch

        out = np.zeros((len(conversations), len(self.categories)))
        with torch.inference_mode():
            for i, conv in enumerate(conversations):
                text = conversation_text(conv, 1500)
                messages = [{"role": "user", "content": self.header + f"Message: {text}\n\nAnswer with one letter."}]
                prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "Answer:"
                ids = self.tokenizer(prompt, return_tensors="pt")
                logits = self.model(**ids).logits[0, -1, self.letter_ids]
                out[i] = torch.softmax(logits.float(), -1).numpy()
        return out

    def predict(self, conversations: Sequence) -> list[str]:
        return [self.categories[i] for i in self.predict_proba(conversations).argmax(axis=1)]


def agreement(predicted: Sequence[str], gold: Sequence[str], rules: RuleSet) -> dict:
    """Category accuracy, and response-type accuracy (what the RBR actually depends on)."""
    n = len(gold)
    cat = sum(p == g for p, g in zip(predicted, gold)) / n if n else float("nan")
    rt = sum(rules.behavior_policy[p] == rules.behavior_policy[g] for p, g in zip(predicted, gold)) / n if n else float("nan")
    return {"rows": n, "category_accuracy": cat, "response_type_accuracy": rt}
