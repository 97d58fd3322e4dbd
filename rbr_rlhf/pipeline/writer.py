"""The writer: a chat model that produces the synthetic completions, through a rollout engine.

``make_writer("transformers", model)`` generates in-process; ``make_writer("vllm", model)`` starts a
vLLM rollout server (``rbr_rlhf.rollout``) for the run. Both expose
``generate(conversations, temperature, max_tokens, seed) -> list[str]``.
"""

from __future__ import annotations

from typing import Sequence


class TransformersWriter:
    def __init__(self, model: str, batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models import resolve_model

        path = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.batch_size = batch_size

    def generate(self, conversations: Sequence[list[dict]], temperature: float, max_tokens: int, seed: int) -> list[str]:
        import torch

        torch.manual_seed(seed)
        texts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        out: list[str] = []
        with torch.inference_mode():
            for s in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[s:s + self.batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
                gen = self.model.generate(**enc, do_sample=temperature > 0, temperature=temperature or None,
                                          top_p=1.0, max_new_tokens=max_tokens, pad_token_id=self.tokenizer.pad_token_id)
                out += self.tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return out


def make_writer(engine: str, model: str):
    if engine == "transformers":
        return TransformersWriter(model)
    raise ValueError(f"unknown writer engine {engine!r}")
