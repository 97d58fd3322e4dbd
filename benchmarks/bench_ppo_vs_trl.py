"""Our PPO step against TRL's GRPOTrainer on the same work, in one process run: completions/s of each,
the ratio ours/TRL, the split of time (generation, reward, training), and our training phase's achieved
FLOP/s against an fp32 matrix product of the same shapes measured in the same run.

Same for both: the policy (SmolLM2-135M-Instruct + LoRA r16/alpha 32 on q,k,v,o), the reward callable
(R_rm + R_rbr: the recipe's reward model, classifier grader and RBR weights, in process), the prompts
(the recipe's safety prompts, in the same order), completions per step (prompts x samples), completion
length (max new tokens, temperature 1), epochs over each batch and minibatch size. Differences that
are the algorithms': PPO trains a critic (LoRA on a second backbone) and runs a reference and a value
pass; GRPO has no critic, and with beta > 0 runs a reference pass. Both generate with transformers
``generate`` on the CPU (ours: rbr_rlhf.rollout.hf_engine; TRL: its own), so the comparison is of the
trainers, not of vLLM; ``--ours-engine vllm`` adds our vLLM rollout server as a third column.

    flock /work/cpu.lock .venv/bin/python benchmarks/bench_ppo_vs_trl.py --cache .cache --rounds 3

``--cache`` holds the recipe's assets (rm-minilm-hh-harmless, grader-minilm-real,
rbr-default/rbr_weights.json), built by ``rbr-rlhf launch prepare smollm2-135m-cpu`` (or a first
``rbr-rlhf train smollm2-135m-cpu``). The first round of each side is a warm-up, left out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ASSETS = {"reward model": "rm-minilm-hh-harmless", "grader": "grader-minilm-real", "RBR weights": "rbr-default/rbr_weights.json"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=".cache", help="directory with the recipe's built assets")
    ap.add_argument("--rounds", type=int, default=3, help="steps per side (the first is a warm-up)")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--samples", type=int, default=2, help="completions per prompt (GRPO needs >= 2)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--minibatch", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2, help="passes over each batch (TRL: num_iterations)")
    ap.add_argument("--beta", type=float, default=0.04, help="TRL's KL coefficient (> 0: a reference pass, like ours)")
    ap.add_argument("--ours-engine", choices=["transformers", "vllm", "both"], default="transformers")
    ap.add_argument("--sides", default="trl,ours", help="which to run, in this order")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    if args.samples < 2:
        ap.error("GRPO needs at least 2 completions per prompt (--samples)")
    if (args.prompts * args.samples) % args.minibatch:
        ap.error("--prompts x --samples must be a multiple of --minibatch")
    return args


def check_assets(cache: str) -> dict[str, str]:
    paths = {k: str(Path(cache) / v) for k, v in ASSETS.items()}
    missing = [f"{k} ({p})" for k, p in paths.items() if not Path(p).exists()]
    if missing:
        raise SystemExit(f"missing reward assets: {', '.join(missing)}. Build them with `rbr-rlhf launch prepare "
                         f"smollm2-135m-cpu` (or a first `rbr-rlhf train smollm2-135m-cpu`) in the directory whose "
                         f".cache/ you pass as --cache.")
    return paths


class InProcessRBR:
    """The grader service's scoring in this process (an ``RBRScorer``): both sides of the benchmark call the
    same reward, without an HTTP hop that only one of them would pay."""

    def __init__(self, rules, grader, weights):
        self.rules, self.grader, self.weights = rules, grader, weights

    def rbr_scores(self, items: list[dict]):
        from rbr_rlhf.grader.base import GradeItem
        from rbr_rlhf.rbr.features import grade_completions
        from rbr_rlhf.rbr.score import RBRScore

        out = [RBRScore.not_applicable() for _ in items]
        idx = [i for i, it in enumerate(items) if self.rules.find_response_type(it["category"]) is not None]
        graded = grade_completions(self.rules, self.grader,
                                   [GradeItem(tuple(items[i]["conversation"]), items[i]["completion"]) for i in idx],
                                   [items[i]["category"] for i in idx])
        for i, g in zip(idx, graded):
            out[i] = RBRScore.from_graded(g, self.weights.reward(self.rules, g))
        return out


def build_reward(paths):
    from rbr_rlhf.grader.factory import build_grader
    from rbr_rlhf.ppo.rewards import RewardFunction
    from rbr_rlhf.rbr.model import RBRWeights
    from rbr_rlhf.rm.model import RewardModel
    from rbr_rlhf.rules import load_rules

    rules = load_rules("default")
    grader = build_grader("classifier:" + paths["grader"], rules)
    rbr = InProcessRBR(rules, grader, RBRWeights.load(paths["RBR weights"], rules))
    return rules, RewardFunction(rules, RewardModel(paths["reward model"]), rbr, 1.0, ["None"], False, None)


class Clock:
    """Seconds spent in generation and in the reward, per side (generate is patched to count)."""

    def __init__(self):
        self.gen = self.reward = 0.0

    def reset(self):
        self.gen = self.reward = 0.0


def patch_generate(clock: Clock):
    from transformers.generation.utils import GenerationMixin

    orig = GenerationMixin.generate

    def timed(self, *a, **kw):
        t = time.perf_counter()
        try:
            return orig(self, *a, **kw)
        finally:
            clock.gen += time.perf_counter() - t

    GenerationMixin.generate = timed


def run_trl(args, rows, reward_fn, clock, policy_path, out_dir):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    def reward(prompts, completions, category=None, **_):
        t = time.perf_counter()
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scored = reward_fn(list(prompts), texts, list(category) if category is not None else [None] * len(texts))
        clock.reward += time.perf_counter() - t
        return [float(x) for x in scored.total]

    n = args.prompts * args.samples
    ds = Dataset.from_list([{"prompt": r["conversation"], "category": r.get("category")} for r in rows])
    cfg = GRPOConfig(output_dir=out_dir, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                     logging_steps=10 ** 6, per_device_train_batch_size=args.minibatch, gradient_accumulation_steps=1,
                     steps_per_generation=n // args.minibatch, num_generations=args.samples, num_iterations=args.epochs,
                     max_completion_length=args.max_tokens, temperature=1.0, top_p=1.0, beta=args.beta,
                     learning_rate=5e-4, shuffle_dataset=False, seed=0, dataloader_num_workers=0,
                     max_steps=args.rounds * (n // args.minibatch) * args.epochs, disable_tqdm=True)
    peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                          task_type="CAUSAL_LM")
    per_round = (n // args.minibatch) * args.epochs
    marks = []

    class Marks(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if state.global_step % per_round == 0:
                marks.append((time.perf_counter(), clock.gen, clock.reward))

    import torch

    trainer = GRPOTrainer(model=policy_path, reward_funcs=reward, args=cfg, train_dataset=ds, peft_config=peft_cfg,
                          processing_class=None, callbacks=[Marks()])
    trainer.model.to(torch.float32)
    clock.reset()
    start = (time.perf_counter(), 0.0, 0.0)
    trainer.train()
    points = [start, *marks]
    rounds = [(b[0] - a[0], b[1] - a[1], b[2] - a[2]) for a, b in zip(points, points[1:])]
    return rounds


def run_ours(args, rows, reward_fn, clock, policy_path, engine_kind):
    from transformers import AutoTokenizer

    from ppo_common import RecordingEngine, make_trainer, step_flops, minibatch_shape, train_config

    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    server = None
    if engine_kind == "vllm":
        from rbr_rlhf.rollout.vllm_server import VLLMEngine, VLLMServer

        server = VLLMServer(policy_path, max_model_len=1024).start()
        inner = VLLMEngine(server.url, policy_path)
    else:
        from rbr_rlhf.rollout.hf_engine import TransformersEngine

        inner = TransformersEngine(policy_path)
    engine = RecordingEngine(inner)
    run_dir = tempfile.mkdtemp(prefix="rbr-bench-ours-")
    cfg = train_config(policy_path, run_dir, prompts_per_step=args.prompts, samples=args.samples, max_tokens=args.max_tokens,
                       minibatch=args.minibatch, epochs=args.epochs, lr=5e-4)
    cfg.ppo.critic_lr = 1e-4

    class Timed:
        moments = reward_fn.moments

        def __call__(self, *a, **kw):
            t = time.perf_counter()
            try:
                return reward_fn(*a, **kw)
            finally:
                clock.reward += time.perf_counter() - t

    trainer = make_trainer(cfg, engine, Timed(), rows, tokenizer)
    rounds, phases, flops = [], [], []
    try:
        for _ in range(args.rounds):
            clock.reset()
            t = time.perf_counter()
            m = trainer.train_step()
            wall = time.perf_counter() - t
            gen = m["time/rollout"]
            rounds.append((wall, gen, clock.reward))
            phases.append({k[5:]: v for k, v in m.items() if k.startswith("time/")})
            flops.append(step_flops(trainer, engine.last))
        shape = minibatch_shape(trainer, engine.last)
    finally:
        inner.close()
        if server is not None:
            server.stop()
    return rounds, phases, flops, shape


def summarise(name, rounds, n):
    measured = rounds[1:] if len(rounds) > 1 else rounds
    wall = sum(r[0] for r in measured)
    gen = sum(r[1] for r in measured)
    rew = sum(r[2] for r in measured)
    return {"side": name, "rounds": len(measured), "completions_per_s": n * len(measured) / wall,
            "seconds_per_step": wall / len(measured), "generation_s": gen / len(measured), "reward_s": rew / len(measured),
            "training_and_rest_s": (wall - gen - rew) / len(measured)}


def main(argv=None):
    args = parse_args(argv)
    paths = check_assets(args.cache)
    import torch

    from rbr_rlhf.models import resolve_model
    from rbr_rlhf.ppo.config import load_config
    from rbr_rlhf.ppo.flops import matmul_reference
    from rbr_rlhf.ppo.prompts import load_prompts
    from rbr_rlhf.ppo.trainer import PromptStream
    from ppo_common import fmt_rate

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    policy_path = resolve_model("smollm2")
    rules, reward_fn = build_reward(paths)
    from transformers import AutoTokenizer

    recipe = load_config("smollm2-135m-cpu", [])
    rows, _ = load_prompts(recipe, rules, AutoTokenizer.from_pretrained(policy_path))
    n = args.prompts * args.samples
    # Both sides see the same prompts in the same order: our PromptStream's (seed 0), handed to TRL unshuffled.
    seq = PromptStream(rows, 0).next(args.prompts * args.rounds)
    clock = Clock()
    patch_generate(clock)
    print(f"[bench] {args.rounds} rounds x {args.prompts} prompts x {args.samples} completions of <= {args.max_tokens} "
          f"tokens, minibatch {args.minibatch}, {args.epochs} epoch(s); torch threads {torch.get_num_threads()}", flush=True)
    results, ours_detail = [], {}
    for side in args.sides.split(","):
        if side == "trl":
            with tempfile.TemporaryDirectory() as d:
                rounds = run_trl(args, seq, reward_fn, clock, policy_path, d)
            results.append(summarise("trl-grpo", rounds, n))
        else:
            kinds = ["transformers", "vllm"] if args.ours_engine == "both" else [args.ours_engine]
            for kind in kinds:
                rounds, phases, flops, shape = run_ours(args, list(seq), reward_fn, clock, policy_path, kind)
                results.append(summarise(f"ours-ppo ({kind})", rounds, n))
                measured = list(zip(phases, flops))[1:] or list(zip(phases, flops))
                train_s = sum(p["training"] for p, _ in measured)
                pass_s = sum(p["ref_critic_passes"] for p, _ in measured)
                achieved = sum(f["training"] for _, f in measured) / train_s
                ref = matmul_reference(shape[0], shape[1], shape[2], dtype=torch.float32)
                ours_detail[kind] = {"phases_s": {k: sum(p[k] for p, _ in measured) / len(measured) for k in measured[0][0]},
                                     "training_flops_per_s": achieved,
                                     "passes_flops_per_s": sum(f["passes"] for _, f in measured) / pass_s,
                                     "matmul_fp32": {"m": shape[0], "k": shape[1], "n": shape[2], "flops_per_s": ref},
                                     "training_vs_matmul": achieved / ref}
    for r in results:
        print(f"[bench] {r['side']:26s} {r['completions_per_s']:.3f} completions/s  ({r['seconds_per_step']:.1f} s/step: "
              f"generation {r['generation_s']:.1f}, reward {r['reward_s']:.1f}, training+rest {r['training_and_rest_s']:.1f})")
    trl = next((r for r in results if r["side"] == "trl-grpo"), None)
    for r in results:
        if trl and r is not trl:
            r["ratio_vs_trl"] = r["completions_per_s"] / trl["completions_per_s"]
            print(f"[bench] {r['side']} / trl-grpo: {r['ratio_vs_trl']:.2f}x")
    for kind, d in ours_detail.items():
        print(f"[bench] ours ({kind}) phases per step: " + ", ".join(f"{k} {v:.1f} s" for k, v in d["phases_s"].items()))
        mm = d["matmul_fp32"]
        print(f"[bench] ours ({kind}) training phase: {fmt_rate(d['training_flops_per_s'])} vs fp32 matmul "
              f"{mm['m']}x{mm['k']} @ {mm['k']}x{mm['n']}: {fmt_rate(mm['flops_per_s'])} -> {100 * d['training_vs_matmul']:.1f}%; "
              f"ref/old/value passes {fmt_rate(d['passes_flops_per_s'])}")
    out = {"results": results, "ours": ours_detail, "config": vars(args)}
    print(json.dumps(out))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
