"""The terminal leaderboard: the top trials, the best setup and where its model is."""
from __future__ import annotations

from typing import Any, Mapping

from ..fmt import text_table


def format_leaderboard(facts: Mapping[str, Any], top: int = 10) -> str:
    """The ``top`` best completed trials and a line on the best one, from a report's facts."""
    h = facts["header"]
    metric, counts = h["metric"], h["trials"]
    running = f", {counts['running']} running" if counts.get("running") else ""
    lines = [f"Leaderboard ({metric} on val; {counts['complete']} complete, {counts['pruned']} pruned, "
             f"{counts['fail']} failed{running})"]
    rows = [[r["rank"], r["trial"], r["value"], r["backbone"], r["adapter"], r["freeze_depth"], r["head_lr"],
             r["backbone_lr"], r["epochs_run"], f"{r['seconds']:.1f}"] for r in facts["leaderboard"][:max(0, top)]]
    if rows:
        lines.append(text_table(rows, ["rank", "trial", metric, "backbone", "adapter", "freeze", "head_lr",
                                       "backbone_lr", "epochs", "seconds"]))
    if len(facts["leaderboard"]) > len(rows):
        lines.append(f"... {len(facts['leaderboard']) - len(rows)} more in the report")
    best = facts.get("best")
    if best:
        test = best.get("test")
        tail = f"; test {metric} {test[metric]:.4f}" if test and metric in test else ""
        lines.append(f"\nBest: trial {best['trial']} ({best['backbone']}), val {metric} {best['val'][metric]:.4f}{tail}")
        if best.get("model_dir"):
            lines.append(f"Model: {best['model_dir']}")
    return "\n".join(lines)
