"""Shared-prompt rows vs one sample a row, in the PPO step's two model phases (ppo/batch.py).

With k samples per prompt (RLOO), ``pack`` puts each sample in a row of its own, so every prompt is
computed k times; ``pack_shared`` puts a prompt and its k samples in one tree-masked row. This script
times, on SmolLM2-135M with the recipe's LoRA, on real gold-train prompts (the ones the CPU recipes train
on, at most 160 tokens) with response lengths like the experiment's (32-48 tokens):

* passes: the no-grad log pi pass over the whole batch (the trainer runs two: log pi_old and log pi_ref)
* update: one PPO epoch's forward + backward passes over minibatches (the trainer runs ppo.epochs)

both layouts in the same run, alternating, and prints the median of each and the ratio; and checks that
the two layouts give the same log-probabilities.

    .venv/bin/python benchmarks/bench_shared_prompt.py [--prompts 8] [--samples 4] [--minibatch 8] [--rounds 3]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt (rollout.samples_per_prompt)")
    ap.add_argument("--minibatch", type=int, default=8, help="samples per minibatch (ppo.minibatch_size)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-prompt-tokens", type=int, default=160)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/rbr_gold/train.jsonl"))
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from rbr_rlhf.models import resolve_model
    from rbr_rlhf.ppo.batch import chunked_forward, minibatch_indices, pack, pack_shared, policy_forward
    from rbr_rlhf.ppo.config import LoraSettings
    from rbr_rlhf.ppo.models import load_policy

    path = resolve_model("smollm2")
    tok = AutoTokenizer.from_pretrained(path)
    model = load_policy(path, LoraSettings(enabled=True, r=16, alpha=32))
    prompts = []
    for line in open(args.data):
        ids = tok.apply_chat_template(json.loads(line)["prompt"], add_generation_prompt=True, tokenize=True,
                                      return_dict=True)["input_ids"]
        if len(ids) <= args.max_prompt_tokens:
            prompts.append(list(ids))
        if len(prompts) == args.prompts:
            break
    g = torch.Generator().manual_seed(0)
    k = args.samples
    prompt_ids = [p for p in prompts for _ in range(k)]
    responses = [torch.randint(100, 40000, (int(n),), generator=g).tolist()
                 for n in torch.randint(32, 49, (len(prompt_ids),), generator=g)]
    plain, shared = pack(prompt_ids, responses, tok.pad_token_id), pack_shared(prompt_ids, responses, tok.pad_token_id, k)
    print(f"{len(prompts)} prompts (mean {statistics.mean(map(len, prompts)):.0f} tokens) x {k} samples "
          f"(mean {statistics.mean(map(len, responses)):.0f} tokens); tokens a pass: one sample a row "
          f"{int(plain.lengths.sum())}, shared rows {int(shared.lengths.sum())}", flush=True)

    def passes(batch):
        model.eval()
        with torch.no_grad():
            return chunked_forward(lambda b: policy_forward(model, b), batch, args.minibatch)

    def update(batch):
        model.train()
        for idx in minibatch_indices(batch, args.minibatch, "by_length", torch.Generator().manual_seed(0)):
            policy_forward(model, batch.select(idx)).sum().backward()
        model.zero_grad(set_to_none=True)

    gap = (passes(plain) - passes(shared)).abs().max().item()  # also the warm-up
    print(f"largest log-probability difference between the layouts: {gap:.2e}", flush=True)
    times = {(phase, name): [] for phase in ("passes", "update") for name in ("plain", "shared")}
    for r in range(args.rounds):
        for name, batch in (("plain", plain), ("shared", shared))[:: 1 if r % 2 == 0 else -1]:
            for phase, fn in (("passes", passes), ("update", update)):
                t = time.perf_counter()
                fn(batch)
                times[(phase, name)].append(time.perf_counter() - t)
    for phase in ("passes", "update"):
        a, b = statistics.median(times[(phase, "plain")]), statistics.median(times[(phase, "shared")])
        print(f"{phase}: one sample a row {a:.2f} s, shared rows {b:.2f} s: {a / b:.2f}x", flush=True)


if __name__ == "__main__":
    main()
