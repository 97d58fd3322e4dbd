"""The in-process transformers engine: for machines without vLLM, and the baseline in benchmarks."""

from __future__ import annotations

from typing import Sequence

import torch

from .types import Generation, WeightSyncError, chat_prompt_ids


class TransformersEngine:
    def __init__(self, model: str, dtype: str = "float32", device: str = "cpu", batch_size: int = 16):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models import resolve_model

        self.path = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=getattr(torch, dtype)).to(device).eval()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.device, self.batch_size = device, batch_size
        self.weight_version = 0

    def generate(self, conversations: Sequence[list[dict]], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_tokens: int = 64, seed: int | None = None, stop: Sequence[str] | None = None) -> list[Generation]:
        if seed is not None:
            torch.manual_seed(seed)
        prompts = [chat_prompt_ids(self.tokenizer, c) for c in conversations]
        flat = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
        out: list[Generation] = []
        with torch.inference_mode():
            for s in range(0, len(flat), self.batch_size):
                chunk = flat[s:s + self.batch_size]
                width = max(len(p) for _, p in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for b, (_, p) in enumerate(chunk):  # left padding: generation continues every row at the end
                    ids[b, width - len(p):] = torch.tensor(p)
                    mask[b, width - len(p):] = 1
                res = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                          do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                                          top_p=top_p, max_new_tokens=max_tokens, pad_token_id=self.pad_id,
                                          output_logits=True, return_dict_in_generate=True, stop_strings=stop,
                                          tokenizer=self.tokenizer if stop else None)
                new = res.sequences[:, width:]
                # Raw (temperature-free) log-probabilities of the sampled tokens, as vLLM reports them.
                logits = torch.stack(res.logits, 1).float()
                logprobs = torch.log_softmax(logits, -1).gather(2, new.unsqueeze(-1)).squeeze(-1)
                for b, (i, p) in enumerate(chunk):
                    toks = new[b].tolist()
                    end = len(toks)
                    for t, tok in enumerate(toks):
                        if tok == self.tokenizer.eos_token_id:
                            end = t + 1
                            break
                        if tok == self.pad_id and self.pad_id != self.tokenizer.eos_token_id:
                            end = t
                            break
                    toks = toks[:end]
                    finish = "stop" if end < new.shape[1] or (toks and toks[-1] == self.tokenizer.eos_token_id) else "length"
                    out.append(Generation(i, p, toks, logprobs[b, :end].tolist(),
                                          self.tokenizer.decode(toks, skip_special_tokens=True), finish, self.weight_version))
        return out

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> int:
        current = self.model.state_dict()
        missing = sorted(set(current) - set(state_dict))
        unknown = sorted(set(state_dict) - set(current))
        wrong = sorted(k for k in set(current) & set(state_dict) if tuple(current[k].shape) != tuple(state_dict[k].shape))
        if missing or unknown or wrong:
            raise WeightSyncError(f"weights refused: missing {missing[:5]}, unknown {unknown[:5]}, wrong shape {wrong[:5]}")
        with torch.no_grad():
            self.model.load_state_dict(state_dict, strict=True)
        self.weight_version += 1
        return self.weight_version

    def close(self) -> None:
        pass
