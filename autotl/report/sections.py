"""The report's facts -> an ordered list of sections, each with a line on how to read it.

Markdown and HTML are rendered from the same sections, so the two always hold the same facts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..fmt import fmt_seconds, fmt_value
from .facts import BACKBONE_LR_PARAMS, row_params


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    id: Optional[str] = None


@dataclass(frozen=True)
class Section:
    """A titled part of the report: a note on how to read it, then paragraphs, tables and figures."""

    title: str
    anchor: str
    how_to_read: str = ""
    blocks: List[Tuple[str, Any]] = field(default_factory=list)  # ("p", text) | ("table", Table) | ("img", name)


def _budget_text(budget: Mapping[str, Any]) -> str:
    if not budget:
        return "-"
    parts = [f"{budget['trials']} trials" if budget.get("trials") else "trials until the timeout"]
    if budget.get("timeout"):
        parts.append(f"timeout {fmt_seconds(budget['timeout'])}")
    parts.append(f"up to {fmt_value(budget.get('epochs'))} epochs per trial")
    parts.append(f"space {budget.get('space', '?')}")
    if budget.get("backbones"):
        parts.append(f"{len(budget['backbones'])} backbone(s)")
    return ", ".join(parts)


def _header(facts: Mapping[str, Any]) -> Section:
    h = facts["header"]
    ds = h.get("dataset") or {}
    budget = h.get("budget") or {}
    counts = h["trials"]
    images = ds.get("images") or {}
    classes = ds.get("classes") or []
    rows = [
        ["Study", h["study"]],
        ["Dataset", f"{ds.get('source', '?')} ({len(classes)} classes: {', '.join(map(str, classes[:12]))}"
                    f"{', ...' if len(classes) > 12 else ''})"],
        ["Images" if ds.get("modality", "image") == "image" else f"Samples ({ds['modality']})",
         ", ".join(f"{s} {images.get(s, 0)}" for s in ("train", "val", "test"))
         + (" (val drawn from train, stratified)" if ds.get("val_from") == "stratified" else "")],
        ["Metric", f"val {h['metric']} ({h['direction']})"],
        ["Budget", _budget_text(budget)],
        ["Trials", ", ".join(f"{v} {k}" for k, v in counts.items() if v or k in ("complete", "pruned", "fail"))],
        ["Elapsed", fmt_seconds(h.get("elapsed_s")) + (f" (started {h['started_at']})" if h.get("started_at") else "")],
        ["Device", ", ".join(h.get("devices") or []) or "-"],
        ["autotl", f"{h['autotl_version']} (study made with {h.get('study_autotl_version') or '?'})"],
        ["Report built", h["generated_at"]],
    ]
    if h.get("storage"):
        rows.append(["Storage", h["storage"]])
    blocks: List[Tuple[str, Any]] = [("table", Table(["", ""], rows, id="header"))]
    if counts.get("running") or counts.get("waiting"):
        blocks.insert(0, ("p", f"The study is still running ({counts.get('running', 0)} trial(s) in progress): "
                               "this report is a snapshot. Build it again to refresh it."))
    if not h.get("autotl_study"):
        blocks.insert(0, ("p", "This study has no autotl attributes; columns autotl records are empty."))
    return Section("Search", "header", "What was searched, on what data, with what budget.", blocks)


def param_columns(columns: Sequence[str]) -> List[str]:
    """The leaderboard's param columns from the facts' ``leaderboard_columns``.

    The backbone learning-rate params collapse into one ``backbone_lr`` column (``x0.1`` or
    ``decay 0.75``), since only one of the multiplier and the decay applies to a trial.
    """
    out: List[str] = []
    for name in columns:
        name = "backbone_lr" if name in BACKBONE_LR_PARAMS else name
        if name not in out:
            out.append(name)
    return out


def param_cell(row: Mapping[str, Any], name: str) -> str:
    """One leaderboard cell: the row's value of ``name``, or — when that trial did not set it."""
    value = row["backbone_lr"] if name == "backbone_lr" else row_params(row).get(name)
    return "—" if value is None else fmt_value(value)


def fixed_text(fixed: Mapping[str, Any]) -> str:
    """The line above the leaderboard that names, once, the params every trial listed shares."""
    return "Fixed in every trial: " + ", ".join(f"{k} {fmt_value(v)}" for k, v in fixed.items())


def gap_text(gap: Mapping[str, Any]) -> str:
    """``val accuracy 0.92, test 0.88 (val − test = 0.04)``; only the val part without a test score.

    A large gap warns that a small validation set picked a trial that was lucky on it.
    """
    text = f"val {gap['metric']} {fmt_value(gap['val'])}"
    if gap.get("gap") is not None:
        text += f", test {fmt_value(gap['test'])} (val − test = {fmt_value(gap['gap'])})"
    return text


def _leaderboard(facts: Mapping[str, Any]) -> Section:
    metric = facts["header"]["metric"]
    names = param_columns(facts["leaderboard_columns"])
    rows = [[r["rank"], r["trial"], *[param_cell(r, n) for n in names], fmt_value(r["value"]), r["epochs_run"],
             f"{r['seconds']:.1f}"] for r in facts["leaderboard"]]
    header = ["rank", "trial", *[n.replace("_", " ") for n in names], f"val {metric}", "epochs", "seconds"]
    blocks: List[Tuple[str, Any]] = [("table", Table(header, rows, id="leaderboard"))]
    if facts["leaderboard_fixed"]:
        blocks.insert(0, ("p", fixed_text(facts["leaderboard_fixed"])))
    if not rows:
        blocks.insert(0, ("p", "No trial has completed yet."))
    return Section("Leaderboard", "leaderboard",
                   "Every completed trial, best first. The columns are the parameters that differ between these "
                   "trials; those all of them share are listed once above the table, and — marks a parameter a "
                   "trial did not use. Backbone lr is the backbone's learning rate as a multiple of head lr (x) or "
                   "as a layer-wise decay factor.", blocks)


def _best(facts: Mapping[str, Any]) -> Section:
    best = facts.get("best")
    if not best:
        return Section("Best setup", "best", "", [("p", "No trial has completed yet.")])
    metric = facts["header"]["metric"]
    rows = [["trial", best["trial"]], ["backbone", best["backbone"]], ["adapter", best["adapter"]]]
    rows += [[k, fmt_value(v)] for k, v in best["params"].items() if k not in ("backbone", "adapter") and v is not None]
    rows += [[f"val {metric}", fmt_value(best["val"].get(metric))],
             ["best epoch", f"{fmt_value(best.get('best_epoch'))} of {best['epochs_run']} run"]]
    if best.get("test"):
        rows += [[f"test {k}", fmt_value(v)] for k, v in best["test"].items()]
    else:
        rows.append(["test", "no test split (or not scored yet)"])
    rows.append(["model", best["model_dir"] or "not on this machine (see the run folder's best/)"])
    refit = best.get("refit")
    if refit:
        rows.append(["refit", f"trial {refit['trial']}'s setup on train + validation ({refit['train_images']} "
                              f"images), {refit['epochs']} epochs"])
        rows += [[f"refit test {k}", fmt_value(v)] for k, v in (refit.get("test") or {}).items()]
        rows.append(["refit model", refit["model_dir"]])
    blocks: List[Tuple[str, Any]] = [("table", Table(["", ""], rows, id="best"))]
    selection = best.get("selection")
    if selection:
        blocks.insert(0, ("p", f"Selection rule: {selection['rule']}"
                               + (f" — {selection['description']}" if selection.get("description") else "")))
    soup = best.get("soup")
    if soup:
        trials = ", ".join(str(t) for t in soup["trials"])
        blocks.insert(len(blocks) - 1, ("p", (
            f"Greedy soup: the weights of trials {trials} averaged score {fmt_value(soup['val'])} on validation "
            f"against {fmt_value(soup['single_val'])} for trial {soup['trials'][0]} alone, so best/ holds the soup."
            if soup.get("kept") else
            f"Greedy soup: tried {soup.get('tried')} models of this backbone; no average beat trial "
            f"{soup['trials'][0]} alone on validation ({fmt_value(soup['single_val'])}), so best/ holds its own weights.")))
    if (best.get("val_test_gap") or {}).get("val") is not None:
        label = "Best model (the soup)" if soup and soup.get("kept") else "Best trial"
        blocks.insert(len(blocks) - 1, ("p", f"{label}: " + gap_text(best["val_test_gap"]) + "."))
    details = best.get("details") or {}
    if details.get("kind") == "per_label":
        blocks.append(("table", Table(["label", "support", f"F1 at {details.get('threshold', 0.5)}", "AP"],
                                      [[r["label"], r["support"], fmt_value(r["f1"]), fmt_value(r["ap"])]
                                       for r in details["rows"]], id="per-label")))
    if details.get("kind") == "scatter":
        blocks.append(("img", "predictions"))
    cm = best.get("confusion_matrix")
    if cm:
        blocks.append(("img", "confusion_matrix"))
        labels = cm["labels"] if len(cm["labels"]) == len(cm["matrix"]) else [str(i) for i in range(len(cm["matrix"]))]
        blocks.append(("table", Table(["true \\ predicted", *labels],
                                      [[lab, *row] for lab, row in zip(labels, cm["matrix"])], id="confusion")))
    return Section("Best setup", "best",
                   "The winning trial's full recipe, the rule that scored each trial's epochs, its validation and "
                   "test scores with their gap (a large gap means val favoured a lucky trial), and where its model "
                   "is. "
                   "`autotl predict` takes the model folder. The confusion matrix (multiclass), per-label scores "
                   "(multilabel) or predictions (regression) are on the test split when there is one, else on val; "
                   "a confusion matrix's off-diagonal cells are the classes it confuses.", blocks)


def _importance(facts: Mapping[str, Any]) -> Section:
    imp = facts["importance"]
    names = sorted({k for e in imp.values() for k in e.get("values", {})},
                   key=lambda k: -max(e.get("values", {}).get(k, 0.0) for e in imp.values()))
    blocks: List[Tuple[str, Any]] = [("img", "optimization_history"), ("img", "importance")]
    if names:
        blocks.append(("table", Table(["parameter", *imp], [[n, *[fmt_value(e.get("values", {}).get(n))
                                                                  for e in imp.values()]] for n in names],
                                      id="importance")))
    for name, e in imp.items():
        if e.get("error"):
            blocks.append(("p", f"{name}: {e['error']}."))
    return Section("What mattered", "importance",
                   "The history shows how fast the search found good setups. Importance is the share of the "
                   "metric's variation each parameter explains, by two of Optuna's evaluators (fANOVA: "
                   "functional ANOVA on a random forest; PED-ANOVA: how the top trials' distribution differs). "
                   "With few trials, read them as hints.", blocks)


def _by_backbone(facts: Mapping[str, Any]) -> Section:
    rows = [[name, fmt_value(e.get("predicted_rank")), e["trials"], e["complete"], e["pruned"], e["fail"],
             fmt_value(e["best"]), fmt_value(e["median"])] for name, e in facts["by_backbone"].items()]
    blocks: List[Tuple[str, Any]] = [("img", "by_backbone"), ("table", Table(
        ["backbone", "predicted rank", "trials", "complete", "pruned", "failed", "best", "median"], rows,
        id="by-backbone"))]
    agreement = facts.get("ranking")
    if agreement:
        tau = agreement.get("tau")
        blocks.append(("p", f"Transferability ranking (LogME, k-NN, H-score) against the best metric each backbone "
                            f"reached: Kendall's tau = {fmt_value(tau)} over {agreement['backbones']} backbones "
                            "(1: the ranking predicted the order exactly; 0: no better than chance)."))
    blocks.append(("img", "freeze_depth"))
    return Section("By backbone", "backbones",
                   "How each source model did, beside the rank the transferability scores predicted before any "
                   "training. A backbone with a high median is a safe choice; one with a high best but a low "
                   "median is sensitive to the recipe.", blocks)


def _curves(facts: Mapping[str, Any]) -> Section:
    pruned = [[p["trial"], p["backbone"], p["stopped_at_epoch"], fmt_value(p["best_value"])] for p in facts["pruned"]]
    blocks: List[Tuple[str, Any]] = [("img", "learning_curves")]
    if pruned:
        blocks.append(("table", Table(["trial", "backbone", "stopped after epoch", "best value"], pruned, id="pruned")))
    if facts["running"]:
        blocks.append(("table", Table(["running trial", "backbone", "epochs so far"],
                                      [[r["trial"], r["backbone"], r["epochs_so_far"]] for r in facts["running"]],
                                      id="running")))
    return Section("Learning curves", "curves",
                   "Each line is one trial's validation metric after each epoch. Pruned trials stop early, where "
                   "the pruner judged them unlikely to catch up.", blocks)


def _cost(facts: Mapping[str, Any]) -> Section:
    c = facts["cost"]
    saved = c["epochs_saved_fraction"]
    rows = [["time in trials", fmt_seconds(c["trial_seconds_total"])],
            ["epochs trained", f"{c['epochs_trained']} of {c['epochs_without_pruning']} without pruning"
                               + (f" ({saved:.0%} saved)" if saved is not None else "")],
            ["time to the best trial", fmt_seconds(c["time_to_best_s"]) if c["time_to_best_s"] is not None else "-"],
            ["trials to the best", fmt_value(c["trials_to_best"])]]
    per = [[p["trial"], p["state"], p["backbone"], p["epochs_run"], f"{p['seconds']:.1f}"] for p in c["per_trial"]]
    return Section("Cost", "cost",
                   "Where the time went. Pruning saves the epochs a search without it would have trained; the "
                   "time to the best tells whether a smaller budget would have found the same setup.",
                   [("table", Table(["", ""], rows, id="cost")), ("img", "timeline"), ("img", "best_over_time"),
                    ("table", Table(["trial", "state", "backbone", "epochs", "seconds"], per, id="cost-per-trial"))])


def _failed(facts: Mapping[str, Any]) -> Section:
    rows = [[f["trial"], f["backbone"], f["reason"]] for f in facts["failed"]]
    blocks: List[Tuple[str, Any]] = ([("table", Table(["trial", "backbone", "reason"], rows, id="failed"))]
                                     if rows else [("p", "No trial failed.")])
    return Section("Failed trials", "failed", "Trials that raised an error, with the reason stored in the study. "
                   "The search went on without them.", blocks)


def build_sections(facts: Mapping[str, Any], skipped: Dict[str, str]) -> List[Section]:
    """The report's sections in reading order; figures that could not be drawn say why."""
    sections = [_header(facts), _leaderboard(facts), _best(facts), _curves(facts), _importance(facts),
                _by_backbone(facts), _cost(facts), _failed(facts)]
    out = []
    for s in sections:
        blocks = []
        for kind, value in s.blocks:
            if kind == "img" and value in skipped:
                blocks.append(("p", f"({value.replace('_', ' ')} not drawn: {skipped[value]})"))
            else:
                blocks.append((kind, value))
        out.append(Section(s.title, s.anchor, s.how_to_read, blocks))
    return out
