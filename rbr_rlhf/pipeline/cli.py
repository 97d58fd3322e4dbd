"""``rbr-rlhf rbr build`` and ``rbr-rlhf prompts classify``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import group

    b = group(sub, "rbr", help="build, fit, check and explain rule-based rewards").add_parser("build", help="synthetic comparisons -> fitted RBR weights, with a report (resumable)")
    b.add_argument("--rules", default="default")
    b.add_argument("--prompts", required=True, help="prompt set: JSONL/Parquet/CSV (or a hub dataset name)")
    b.add_argument("--grader", required=True, help="classifier:DIR | llm:MODEL | openai:MODEL@URL")
    b.add_argument("--rm", help="helpful reward model directory (its score goes inside the fit); omit for RBR-only")
    b.add_argument("--out", required=True, help="run directory: every stage caches here and resumes from here")
    b.add_argument("--writer", default="smollm2", help="model that writes the synthetic completions")
    b.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                   help="generate in-process with transformers, or through a vLLM rollout server")
    b.add_argument("--prompt-classifier", default="train",
                   help="for prompts without a category: a trained classifier DIR, 'train' (fit one on the prompts "
                        "that have categories) or 'llm' (the writer model, prompted)")
    b.add_argument("--limit-prompts", type=int)
    b.add_argument("--samples-per-class", type=int, default=1)
    b.add_argument("--max-rounds", type=int, default=2, help="generation rounds: misses are re-generated")
    b.add_argument("--temperature", type=float, default=0.9)
    b.add_argument("--max-tokens", type=int, default=96)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--keep", choices=["intended", "graded"], default="intended",
                   help="comparison data: candidates graded in their intended class only (the paper), or every "
                        "candidate labelled with the class the grader gives it")
    b.add_argument("--openings", help="writer strategies: 'default' (built in, for the default rule set) or a YAML "
                   "file; default: the class checklist as instructions (see docs/rbr-pipeline.md)")
    b.add_argument("--ranking-data", help="data root holding xstest/: report how R_rm, R_rbr and the sum rank real "
                   "compliance/refusal pairs (the XSTest half the reward grader did not train on)")
    b.add_argument("--ranking-answers", help="labelled answers to unsafe prompts (`grader unsafe-answers`) for the "
                   "unsafe-prompt pairs")
    b.add_argument("--margin", type=float, default=1.0)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--force", action="store_true", help="reuse cached stages even if the configuration changed")
    b.add_argument("--json", action="store_true")
    b.set_defaults(handler=run_build)

    c = group(sub, "prompts", help="prompt classifiers (content category)").add_parser("classify", help="train/evaluate a prompt classifier (content category)")
    c.add_argument("--rules", default="default")
    c.add_argument("--kind", choices=["trained", "llm"], default="trained")
    c.add_argument("--train", help="prompts with categories to train on (kind=trained)")
    c.add_argument("--classifier", help="a trained classifier directory to load instead of training")
    c.add_argument("--data", required=True, help="prompts to classify; rows with a category are scored against it")
    c.add_argument("--model", default="smollm2", help="the LLM for kind=llm")
    c.add_argument("--out", help="save the trained classifier here")
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=run_classify)


def run_build(args) -> int:
    from ..cli import print_json
    from ..rules import load_rules
    from .build import BuildConfig, BuildRBR

    rules = load_rules(args.rules)
    cfg = BuildConfig(prompts=args.prompts, out=args.out, grader=args.grader, rm=args.rm, rules=args.rules,
                      writer=args.writer, engine=args.engine, prompt_classifier=args.prompt_classifier,
                      limit_prompts=args.limit_prompts, samples_per_class=args.samples_per_class,
                      max_rounds=args.max_rounds, temperature=args.temperature, max_tokens=args.max_tokens,
                      batch_size=args.batch_size, seed=args.seed, keep=args.keep, openings=args.openings,
                      ranking_data=args.ranking_data, ranking_answers=args.ranking_answers,
                      fit={"margin": args.margin})
    report = BuildRBR(cfg, rules, force=args.force).run()
    print(open(f"{args.out}/report.md").read())
    if args.json:
        fit = report.get("fit") or {}
        print_json({"out": args.out, "prompts": report["prompts"], "kept": report["kept"],
                    "error_rate": fit.get("error_rate"), "failed_completion_types": report["failed_completion_types"],
                    "ranking": report.get("ranking")})
    return 0


def run_classify(args) -> int:
    from ..cli import print_json
    from ..pipeline.prompts import load_prompt_set
    from ..rules import load_rules
    from .prompt_classifier import LLMPromptClassifier, TrainedPromptClassifier, agreement

    rules = load_rules(args.rules)
    if args.kind == "llm":
        clf = LLMPromptClassifier(rules, args.model)
    elif args.classifier:
        clf = TrainedPromptClassifier.load(args.classifier, rules)
    else:
        if not args.train:
            raise ValueError("kind=trained needs --train FILE (prompts with categories) or --classifier DIR")
        train = [r for r in load_prompt_set(args.train) if r["category"] is not None]
        clf = TrainedPromptClassifier.train(rules, [r["conversation"] for r in train], [r["category"] for r in train])
        if args.out:
            clf.save(args.out)
    rows = load_prompt_set(args.data)
    pred = clf.predict([r["conversation"] for r in rows])
    known = [(p, r["category"]) for p, r in zip(pred, rows) if r["category"] is not None]
    result = {"kind": clf.kind, "rows": len(rows)}
    if known:
        result.update(agreement([p for p, _ in known], [g for _, g in known], rules))
        print(f"{clf.kind} prompt classifier on {len(known)} labelled prompts: category accuracy "
              f"{100 * result['category_accuracy']:.1f}%, response-type accuracy {100 * result['response_type_accuracy']:.1f}%")
    if args.json:
        print_json(result)
    return 0
