"""The end-of-run plot: reward components and safety metrics over steps."""

from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics_path: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(l) for l in Path(metrics_path).read_text().splitlines() if l.strip()]
    steps = [r["step"] for r in rows]

    def series(key):
        return [r.get(key) if r.get(key) is not None else float("nan") for r in rows]

    panels = [("rewards", ["reward/total", "reward/rm", "reward/rbr"]
                              + (["reward/safety_rm"] if any(r.get("reward/safety_rm") is not None for r in rows) else [])),
              ("KL", ["kl/sequence_mean", "kl/coef"]),
              ("safety", ["safety/refusal_rate_comply"] + sorted({k for r in rows for k in r if k.startswith("classes/hard_refuse/")})),
              ("losses", [k for k in ("policy/loss", "value/loss", "policy/clipfrac")  # no value/loss without a critic
                          if any(r.get(k) is not None for r in rows)])]
    if any(k.startswith("dev/") for r in rows for k in r):  # data.dev_prompts: the same prompts each time
        panels.insert(1, ("dev split (greedy)", [k for k in ("dev/reward_total", "dev/rm", "dev/rbr", "dev/safety_rm")
                                                 if any(r.get(k) is not None for r in rows)]))
        ideal = sorted({k for r in rows for k in r if k.startswith("dev/ideal/")})
        if ideal:  # the share of dev answers the reward's grader calls ideal, per response type
            panels.insert(2, ("dev split: ideal class", ideal))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
    for ax, (title, keys) in zip(axes, panels):
        # Short labels ("reward/total" -> "total") unless that would make two alike ("policy/loss", "value/loss").
        short = [k.split("/", 1)[-1] for k in keys]
        for k, label in zip(keys, short if len(set(short)) == len(short) else keys):
            ax.plot(steps, series(k), marker="o", ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
