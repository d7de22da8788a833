"""The report's figures as PNG bytes.

Optuna's matplotlib visualizations draw what Optuna has (optimization history, intermediate
values, parameter importances, timeline); matplotlib draws only what it lacks (metric by
backbone, freeze depth coloured by backbone, best value over wall-clock time), and scikit-learn
draws the confusion matrix. A figure that cannot be drawn for this study is left out with its
reason, never failing the report.
"""
from __future__ import annotations

import io
import warnings
from typing import Any, Callable, Dict, List, Mapping, Tuple

import optuna

#: name -> (title, caption); the order is the report's.
PLOTS: Dict[str, Tuple[str, str]] = {
    "optimization_history": ("Optimization history", "Each completed trial's value and the best so far."),
    "learning_curves": ("Learning curves", "Validation metric by epoch for every trial; x marks where a pruned "
                        "trial stopped."),
    "importance": ("Parameter importance", "How much of the metric's variation each parameter explains (fANOVA)."),
    "by_backbone": ("Metric by backbone", "Each trial's value per source model; the box spans the completed trials' "
                    "quartiles, hollow markers are pruned trials at their best epoch."),
    "freeze_depth": ("Freeze depth against the metric", "Each trial's value at its freeze depth, coloured by "
                     "backbone; hollow markers are pruned trials at their best epoch."),
    "timeline": ("Timeline", "When each trial ran and how it ended."),
    "best_over_time": ("Best value over time", "The best completed value against wall-clock time since the study "
                       "started."),
    "confusion_matrix": ("Confusion matrix", "The best trial's predictions; rows are true classes."),
    "predictions": ("Predicted against true", "The best trial's predictions for each image; the diagonal is "
                    "perfect."),
}

SIZE = (7.5, 4.2)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return buf.getvalue()


def _optuna_plot(draw: Callable[[], Any], ylabel: str = "") -> bytes:
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = draw()
    ax = ax.flat[0] if hasattr(ax, "flat") else ax
    fig = ax.figure
    try:
        if ylabel:
            ax.set_ylabel(ylabel)
        fig.set_size_inches(*SIZE)
        return _png(fig)
    finally:
        plt.close(fig)


def _figure() -> Tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE)
    return fig, fig.add_subplot()


def _colors(names: List[str]) -> Dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def learning_curves(study: optuna.Study, facts: Mapping[str, Any]) -> bytes:
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_intermediate_values

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = plot_intermediate_values(study)
    try:
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
        for number, curve in facts["curves"].items():
            if curve["state"] == "pruned" and curve["steps"]:
                ax.plot([curve["steps"][-1]], [curve["values"][-1]], marker="x", color="crimson", markersize=9,
                        linestyle="none", label="_pruned")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"val {facts['header']['metric']}")
        ax.figure.set_size_inches(*SIZE)
        return _png(ax.figure)
    finally:
        plt.close(ax.figure)


def by_backbone(facts: Mapping[str, Any]) -> bytes:
    names = list(facts["by_backbone"])
    partial: Dict[str, List[float]] = {n: [] for n in names}
    for p in facts["freeze_depth"]:  # pruned trials' best epoch, so a backbone never completed still shows
        if p["state"] == "pruned" and p["backbone"] in partial:
            partial[p["backbone"]].append(p["value"])
    if not any(facts["by_backbone"][n]["values"] or partial[n] for n in names):
        raise ValueError("no trial with a value")
    fig, ax = _figure()
    fig.set_size_inches(SIZE[0], max(2.2, 0.9 + 0.55 * len(names)))
    colors = _colors(sorted(names))
    for i, n in enumerate(names, 1):
        values = facts["by_backbone"][n]["values"]
        if values:
            ax.boxplot([values], positions=[i], orientation="horizontal", widths=0.5, showfliers=False,
                       medianprops={"color": colors[n]})
            ax.scatter(values, [i] * len(values), s=22, color=colors[n], zorder=3,
                       label="completed" if i == 1 else None)
        if partial[n]:
            ax.scatter(partial[n], [i] * len(partial[n]), s=22, facecolors="none", edgecolors=[colors[n]], zorder=3)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.set_ylim(len(names) + 0.6, 0.4)
    ax.set_xlabel(f"val {facts['header']['metric']} (filled: completed, hollow: pruned at its best epoch)")
    return _png(fig)


def freeze_depth(facts: Mapping[str, Any]) -> bytes:
    points = [p for p in facts["freeze_depth"] if p["freeze_depth"] is not None]
    if not points:
        raise ValueError("no trial with a freeze depth and a value")
    fig, ax = _figure()
    colors = _colors(sorted({p["backbone"] for p in points}))
    for name, color in colors.items():
        for state, face in (("complete", color), ("pruned", "none")):
            sel = [p for p in points if p["backbone"] == name and p["state"] == state]
            if sel:
                ax.scatter([p["freeze_depth"] for p in sel], [p["value"] for p in sel], s=40, edgecolors=[color],
                           facecolors=face, label=name if state == "complete" or not any(
                               p["backbone"] == name and p["state"] == "complete" for p in points) else None)
    ax.set_xlabel("freeze depth (0 = train all, 1 = linear probe)")
    ax.set_ylabel(f"val {facts['header']['metric']}")
    ax.set_xlim(-0.05, 1.05)
    ax.legend(fontsize="small", loc="best")
    return _png(fig)


def best_over_time(study: optuna.Study) -> bytes:
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.datetime_complete and t.value is not None]
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    if not done or not starts:
        raise ValueError("no completed trial")
    t0 = min(starts)
    done.sort(key=lambda t: t.datetime_complete)
    span = (done[-1].datetime_complete - t0).total_seconds()
    unit, scale = ("minutes", 60.0) if span >= 180 else ("seconds", 1.0)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    xs, ys, best = [], [], None
    for t in done:
        best = t.value if best is None else (max(best, t.value) if maximize else min(best, t.value))
        xs.append((t.datetime_complete - t0).total_seconds() / scale)
        ys.append(best)
    fig, ax = _figure()
    ax.step(xs, ys, where="post", color="tab:blue", label="best so far")
    ax.scatter(xs, [t.value for t in done], s=14, alpha=0.5, color="tab:gray", label="completed trial")
    ax.set_xlim(left=0)
    ax.legend(fontsize="small", loc="lower right")
    ax.set_xlabel(f"{unit} since the study started")
    ax.set_ylabel("best value so far")
    return _png(fig)


def confusion_matrix(facts: Mapping[str, Any]) -> bytes:
    from sklearn.metrics import ConfusionMatrixDisplay
    import numpy as np

    cm = (facts.get("best") or {}).get("confusion_matrix")
    if not cm:
        raise ValueError("the best trial has no confusion matrix")
    n = len(cm["matrix"])
    labels = cm["labels"] if len(cm["labels"]) == n else [str(i) for i in range(n)]
    side = min(10.0, 2.5 + 0.45 * n)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(np.asarray(cm["matrix"]), display_labels=labels).plot(ax=ax, colorbar=False,
                                                                                    cmap="Blues")
    ax.set_title(f"{cm['split']} split")
    ax.grid(False)
    return _png(fig)


def predictions(facts: Mapping[str, Any]) -> bytes:
    details = (facts.get("best") or {}).get("details") or {}
    if details.get("kind") != "scatter" or not details.get("points"):
        raise ValueError("the best trial has no regression predictions")
    y, p = zip(*details["points"])
    fig, ax = _figure()
    lo, hi = min(min(y), min(p)), max(max(y), max(p))
    ax.plot([lo, hi], [lo, hi], color="tab:gray", linewidth=1)
    ax.scatter(y, p, s=14, alpha=0.6)
    ax.set_xlabel(f"true {details.get('target', 'target')} ({details.get('split', '')} split)")
    ax.set_ylabel("predicted")
    return _png(fig)


def draw_all(study: optuna.Study, facts: Mapping[str, Any]) -> Tuple[Dict[str, bytes], Dict[str, str]]:
    """Every figure that can be drawn for this study, and why each other one was left out."""
    import matplotlib

    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as ovm

    complete = facts["header"]["trials"]["complete"]
    makers: Dict[str, Callable[[], bytes]] = {
        "optimization_history": lambda: _optuna_plot(lambda: ovm.plot_optimization_history(study),
                                                     ylabel=f"val {facts['header']['metric']}"),
        "learning_curves": lambda: learning_curves(study, facts),
        "importance": lambda: _optuna_plot(lambda: ovm.plot_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=0))),
        "by_backbone": lambda: by_backbone(facts),
        "freeze_depth": lambda: freeze_depth(facts),
        "timeline": lambda: _optuna_plot(lambda: ovm.plot_timeline(study)),
        "best_over_time": lambda: best_over_time(study),
        "confusion_matrix": lambda: confusion_matrix(facts),
        "predictions": lambda: predictions(facts),
    }
    needs_complete = {"optimization_history", "best_over_time"}
    images: Dict[str, bytes] = {}
    skipped: Dict[str, str] = {}
    with matplotlib.rc_context({"figure.max_open_warning": 0, "axes.grid": True, "grid.alpha": 0.3}):
        for name, make in makers.items():
            if name in needs_complete and complete == 0:
                skipped[name] = "no completed trial yet"
                continue
            if name == "importance" and not facts["importance"].get("fANOVA", {}).get("values"):
                skipped[name] = facts["importance"].get("fANOVA", {}).get("error", "not available")
                continue
            kind = ((facts.get("best") or {}).get("details") or {}).get("kind")
            if name in ("confusion_matrix", "predictions") and kind != {"confusion_matrix": "confusion",
                                                                        "predictions": "scatter"}[name]:
                continue  # not this task's figure: nothing to explain
            if name == "learning_curves" and not facts["curves"]:
                skipped[name] = "no trial reported an epoch yet"
                continue
            try:
                images[name] = make()
            except Exception as exc:  # one figure never fails the report
                skipped[name] = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    return images, skipped
