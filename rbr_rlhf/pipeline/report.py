"""The build report: yields, error rates (RM-only, RBR-only, RM+RBR on held-out prompts) and the
paper-style histograms of rewards centred on each prompt's ideal (or else best-ranked) completion."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ..data import write_json
from ..rbr.features import features_from_probs
from ..rbr.fit import split_by_prompt
from ..rbr.model import RBRWeights
from ..rules.ruleset import RuleSet


def centred_rewards(rules: RuleSet, comparisons: list[dict], rbr: RBRWeights, use_rm: bool, use_rbr: bool) -> dict:
    """{response type: [R(worse) - R(best) for every held-out prompt's completions]}; >= 0 is an error."""
    build = rbr.config.get("build", {})  # the same split as the fit: same fraction, same seed
    val = split_by_prompt([c["prompt_id"] for c in comparisons], build.get("fit", {}).get("val_fraction", 0.2),
                          build.get("seed", 0))
    groups = defaultdict(list)
    for c in comparisons:
        if c["prompt_id"] in val:
            groups[c["prompt_id"]].append(c)
    out = defaultdict(list)
    for rows in groups.values():
        rt = rules.response_types[rows[0]["response_type"]]

        def reward(r):
            total = r.get("rm_score", 0.0) if use_rm else 0.0
            if use_rbr and rt.name in rbr.weights:
                total += float(rbr.vector(rules, rt.name) @ features_from_probs(rules, rt.name, r["proposition_probs"]))
            return total

        # Centre on the prompt's best-ranked completion: the ideal one, as in the paper, where the writer
        # produced one; otherwise the best class it did produce (a small writer often never writes an ideal
        # refusal, and its held-out prompts would otherwise show nothing).
        rank = {name: k for k, name in enumerate(rt.class_names)}
        best = min(rank[r["completion_class"]] for r in rows)
        for b in [reward(r) for r in rows if rank[r["completion_class"]] == best]:
            for r in rows:
                if rank[r["completion_class"]] > best:
                    out[rt.name].append(reward(r) - b)
    return out


def write_report(out_dir: Path, rules: RuleSet, report: dict, comparisons: list[dict], rbr: RBRWeights) -> None:
    methods = {"RM only": (True, False), "RBR only": (False, True), "RM + RBR": (True, True)}
    if not rbr.reward_model:
        methods = {"RBR only": (False, True)}
    hists = {name: centred_rewards(rules, comparisons, rbr, *flags) for name, flags in methods.items()}
    if any(hists.values()):
        _plot(out_dir / "reward_histograms.png", hists)
        report["plot"] = "reward_histograms.png"
    write_json(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(_markdown(report), encoding="utf-8")


def _plot(path: Path, hists: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rts = sorted({rt for h in hists.values() for rt in h})
    fig, axes = plt.subplots(len(rts), len(hists), figsize=(4 * len(hists), 2.6 * len(rts)), squeeze=False)
    for i, rt in enumerate(rts):
        for j, (name, h) in enumerate(hists.items()):
            ax, vals = axes[i][j], np.array(h.get(rt, []))
            if len(vals):
                ax.hist(vals, bins=20, color="tab:red" if "RBR" not in name else "tab:blue", alpha=0.8)
                err = float(np.mean(vals >= 0))
                ax.set_title(f"{rt}: {name}\nerror rate {100 * err:.0f}% (n={len(vals)})", fontsize=9)
            else:
                ax.set_title(f"{rt}: {name}\n(no held-out comparisons)", fontsize=9)
            ax.axvline(0, color="black", lw=1)
            ax.set_xlabel("R(completion) - R(best)", fontsize=8)
    fig.suptitle("Rewards centred on each held-out prompt's best completion (the ideal one where written); "
                 "mass right of 0 = errors", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _markdown(r: dict) -> str:
    lines = ["# rbr build report", "",
             f"{r['prompts']} prompts ({', '.join(f'{k}: {v}' for k, v in r['response_types'].items())}); "
             f"{r['candidates']} candidates generated, {r['kept']} kept "
             f"({'graded class = intended class' if r['config'].get('keep', 'intended') == 'intended' else 'every candidate with one graded class, labelled with it'}).", "",
             "## Yield per completion type", "",
             "On target: candidates written for the class that the grader put in it (yield = on target / attempts). "
             "Kept: comparison rows of the class.", "",
             "| response type / class | wanted | attempts | on target | yield | kept |",
             "| --- | --- | --- | --- | --- | --- |"]
    for k, v in r["yield"].items():
        lines.append(f"| {k} | {v['wanted']} | {v['attempts']} | {v.get('on_target', v['kept'])} | {_pct(v['yield'])} | {v['kept']} |")
    if r["failed_completion_types"]:
        lines += ["", "The writer produced **no** accepted completion for: " + ", ".join(r["failed_completion_types"]) + "."]
    fit = r.get("fit") or {}
    if fit:
        er = fit["error_rate"]
        lines += ["", f"## Error rate on {fit['evaluated_on']}", "",
                  "The paper's error rate compares each prompt's ideal completion with the rest; the pairwise "
                  "row counts every pair of completions whose classes rank differently. Ties count as errors.", "",
                  "| | RM only | RBR only | RM + RBR |", "| --- | --- | --- | --- |",
                  f"| ideal vs the rest ({fit.get('comparisons_val', 0)}) | {_pct(er['rm_only'])} | {_pct(er['rbr_only'])} | "
                  f"{_pct(er['rm_plus_rbr'])} |"]
        pw = fit.get("pairwise_error_rate") or {}
        lines.append(f"| all ranked pairs ({fit.get('pairwise_comparisons_val', 0)}) | {_pct(pw.get('rm_only'))} | "
                     f"{_pct(pw.get('rbr_only'))} | {_pct(pw.get('rm_plus_rbr'))} |")
        tr = fit.get("error_rate_train") or {}
        lines.append(f"| ideal vs the rest, *training* prompts | {_pct(tr.get('rm_only'))} | {_pct(tr.get('rbr_only'))} | "
                     f"{_pct(tr.get('rm_plus_rbr'))} |")
        per = fit["error_rate_per_response_type"]
        for rt in sorted((per.get("rbr_only") or {})):
            cells = [_pct((per.get(m) or {}).get(rt)) for m in ("rm_only", "rbr_only", "rm_plus_rbr")]
            lines.append(f"| {rt} | " + " | ".join(cells) + " |")
    else:
        lines += ["", "No comparisons were kept, so no weights could be fitted."]
    if r.get("ranking"):
        lines += ["", ranking_markdown(r["ranking"])]
    if r.get("plot"):
        lines += ["", f"![rewards centred on the ideal completion]({r['plot']})"]
    lines += ["", "## Time per stage (s)", "", ", ".join(f"{k}: {v}" for k, v in r["timings_s"].items())]
    return "\n".join(lines) + "\n"


def _pct_ci(m: dict, key: str) -> str:
    ci = m.get(key + "_ci")
    return _pct(m.get(key)) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")


def ranking_markdown(rk: dict) -> str:
    """The reward-ranking table (rbr/ranking.py) as Markdown: share of pairs each reward ranks right."""
    lines = ["## Ranking real answers (compliance vs refusal to one prompt)", "",
             f"Pairs: {rk.get('pairs_from', '')}. The right answer is the compliance on safe prompts and the "
             "refusal on unsafe ones; the share of pairs each reward ranks right (ties are wrong), with its 95% "
             "bootstrap interval:", "",
             "| prompts | pairs | R_rm | R_rbr | R_rm + R_rbr |", "| --- | --- | --- | --- | --- |"]
    for kind in ("safe", "unsafe"):
        m = rk.get(kind) or {}
        if m.get("n"):
            lines.append(f"| {kind} | {m['n']} | {_pct_ci(m, 'r_rm')} | {_pct_ci(m, 'r_rbr')} | {_pct_ci(m, 'total')} |")
    return "\n".join(lines)
