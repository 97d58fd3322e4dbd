"""The experiment's table and plot: the shared start and each arm after training, side by side.

Every figure is the independent judge's (``evaluation/evaluate.py``, the same ``RunEvaluation`` code every
run uses) with its n and 95% bootstrap interval, plus the helpful RM's mean score on benign prompts
(should-comply gold prompts and XSTest's safe prompts; every arm shares the helpful RM as R_rm). Written
as OUT_DIR/table.md, table.json and table.png; the pre-registered ``goals`` are checked on it as written
in the recipe, never chosen after looking.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .config import ExperimentConfig

FIGURES = (
    ("not_unsafe", "Not-Unsafe"),
    ("not_overrefuse", "Not-Overrefuse"),
    ("f1", "F1"),
    ("hard_refusal_style", "Hard-Refusal-Style"),
    ("xstest_refusal_unsafe", "XSTest refusal (unsafe)"),
    ("xstest_compliance_safe", "XSTest compliance (safe)"),
    ("r_rm_benign", "helpful RM on benign prompts"),
)


def figures_of(result: dict) -> dict[str, dict]:
    """One evaluation's figures: the judge's, and the reward model's mean on benign prompts."""
    judge = (result.get("metrics") or {}).get("judge") or {}
    out = {k: judge[k] for k, _ in FIGURES if k in judge}
    benign = (result.get("reward") or {}).get("r_rm_benign")
    if benign:
        out["r_rm_benign"] = benign
    return out


def collect(cfg: ExperimentConfig) -> tuple[dict[str, dict], list[str]]:
    """Row name -> evaluation result: the start (the first arm's "before"), then each arm's "after"; and
    what is missing (arms not finished)."""
    rows, missing = {}, []
    for i, arm in enumerate(cfg.arms):
        path = Path(cfg.out_dir) / arm / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        if i == 0:
            before = summary.get("before")
            if before is None and (Path(cfg.out_dir) / arm / "eval-before.json").exists():
                before = json.loads((Path(cfg.out_dir) / arm / "eval-before.json").read_text())
            if before and "metrics" in before:
                rows[cfg.start_row] = before
            else:
                missing.append(cfg.start_row)
        if summary.get("after") and "metrics" in summary["after"]:
            rows[arm] = summary["after"]
        else:
            missing.append(arm)
    return rows, missing


def _independence(flag) -> str:
    """A row's judge vs its reward: an arm without an RBR term has no reward grader to be independent of."""
    return {True: "yes", False: "NO, the judge is the reward's grader"}.get(flag, "no grader in the reward")


def build_table(rows: dict[str, dict], goals: list[str] = (), missing: list[str] = ()) -> dict:
    """The table as data: per row its figures ({value, low, high, n}), its prompt count and the judge."""
    table = {"figures": [{"key": k, "name": n} for k, n in FIGURES],
             "rows": {name: figures_of(r) for name, r in rows.items()},
             "prompts": {name: r.get("prompts") for name, r in rows.items()},
             "judge": sorted({str((r.get("judge") or {}).get("spec")) for r in rows.values()}),
             "independent": sorted({_independence((r.get("judge") or {}).get("independent")) for r in rows.values()}),
             "missing": list(missing)}
    table["goals"] = check_goals(table, goals)
    return table


GOAL = re.compile(r"^\s*([\w.-]+)\.(\w+)\s*(>|<)\s*([\w.-]+)\.(\w+)\s*$")


def _half_width(fig: dict) -> float:
    return (fig["high"] - fig["low"]) / 2


def check_goals(table: dict, goals: list[str]) -> list[dict]:
    """``"rbr-ppo.f1 > helpful-ppo.f1"``: does the point estimate hold; is the difference larger than both
    intervals' half-widths (``beyond_half_widths``, issue 18's test); are the intervals apart
    (``separated``, stricter still)?"""
    out = []
    for goal in goals:
        m = GOAL.match(goal)
        if not m:
            raise ValueError(f"goal {goal!r}: write ARM.FIGURE > ARM.FIGURE (figures: {[k for k, _ in FIGURES]})")
        (a, fa, op, b, fb) = m.groups()
        left, right = table["rows"].get(a, {}).get(fa), table["rows"].get(b, {}).get(fb)
        rec = {"goal": goal, "holds": None, "beyond_half_widths": None, "separated": None}
        if left and right and left.get("value") is not None and right.get("value") is not None:
            diff = left["value"] - right["value"] if op == ">" else right["value"] - left["value"]
            apart = left["low"] > right["high"] if op == ">" else left["high"] < right["low"]
            half = max(_half_width(left), _half_width(right))
            rec.update(holds=bool(diff > 0), beyond_half_widths=bool(diff > half), separated=bool(apart),
                       left=left["value"], right=right["value"], difference=diff, half_width=half)
        out.append(rec)
    return out


def _cell(fig: dict | None, digits: int = 3) -> str:
    if not fig or fig.get("value") is None:
        return "—"
    return f"{fig['value']:.{digits}f} [{fig['low']:.{digits}f}, {fig['high']:.{digits}f}] (n={fig['n']})"


def render_markdown(table: dict, title: str = "") -> str:
    lines = [f"**{title}**", ""] if title else []
    names = list(table["rows"])
    lines.append("| figure | " + " | ".join(names) + " |")
    lines.append("| --- |" + " --- |" * len(names))
    for f in table["figures"]:
        lines.append(f"| {f['name']} | " + " | ".join(_cell(table["rows"][n].get(f["key"])) for n in names) + " |")
    lines += ["", f"judge: {', '.join(f'`{j}`' for j in table['judge'])} (independent of the reward: "
              f"{', '.join(table['independent'])}); prompts per row: "
              + ", ".join(f"{n} {p}" for n, p in table["prompts"].items())
              + "; each cell: value [95% bootstrap interval] (n)"]
    if table["missing"]:
        lines.append(f"\nnot measured yet: {', '.join(table['missing'])}")
    for g in table["goals"]:
        if g["holds"] is None:
            verdict = "not measured"
        else:
            verdict = "holds" if g["holds"] else "does not hold"
            if g["holds"]:
                verdict += (f" by {g['difference']:.3f}, " + ("more" if g["beyond_half_widths"] else "not more")
                            + f" than the larger half-width ({g['half_width']:.3f})")
            verdict += ", intervals apart" if g["separated"] else ", intervals overlap"
        lines.append(f"\ngoal (set before the run) `{g['goal']}`: {verdict}")
    return "\n".join(lines)


def plot_table(table: dict, path: str | Path, title: str = "") -> Path:
    """One panel per figure, a bar per row with its 95% interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table["rows"])
    figs = table["figures"]
    cols = 4
    fig, axes = plt.subplots(2, cols, figsize=(3.2 * cols, 6.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, f in zip(axes.flat, figs):
        for i, name in enumerate(names):
            cell = table["rows"][name].get(f["key"])
            if not cell or cell.get("value") is None:
                continue
            v = cell["value"]
            ax.bar(i, v, color=colours[i % len(colours)], label=name,
                   yerr=[[v - cell["low"]], [cell["high"] - v]], capsize=4)
        ax.set_title(f["name"], fontsize=10)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        if f["key"] != "r_rm_benign":
            ax.set_ylim(0, 1.05)
    for ax in list(axes.flat)[len(figs):]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i % len(colours)]) for i in range(len(names))]
    list(axes.flat)[-1].legend(handles, names, loc="center", title="95% bootstrap intervals")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_table(cfg: ExperimentConfig) -> dict:
    rows, missing = collect(cfg)
    table = build_table(rows, cfg.goals, missing)
    out = Path(cfg.out_dir)
    title = f"{cfg.name}: {', '.join(cfg.arms)} from one start"
    (out / "table.json").write_text(json.dumps(table, indent=2, default=float))
    (out / "table.md").write_text(render_markdown(table, title) + "\n")
    if rows:
        plot_table(table, out / "table.png", title)
    print(render_markdown(table, title), flush=True)
    print(f"[experiment] table -> {out / 'table.md'}, {out / 'table.json'}" + (f", {out / 'table.png'}" if rows else ""),
          flush=True)
    return table
