"""Pictures of a run, drawn with matplotlib (off-screen) into PNG files."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in Ray jobs
logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font-cache notice is not ours to show
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedray.config import site_names  # noqa: E402
from fedray.fl_model import accuracy_of  # noqa: E402

MAX_LEGEND_SITES = 24

log = logging.getLogger(__name__)


def draw_run(summary: Mapping[str, Any], folder: str | os.PathLike) -> list[Path]:
    """The end-of-run pictures in `folder`, from the run's summary; returns those drawn."""
    folder = Path(folder)
    rounds = summary["rounds"]
    cross_site = (summary.get("cross_site") or {}).get("results")
    drawn = []
    if rounds:
        sites = site_names(summary["config"]["num_clients"])
        drawn += [
            draw_safely(global_metrics, rounds, path=folder / "global_metrics.png"),
            draw_safely(site_train_loss, rounds, sites, path=folder / "site_train_loss.png"),
        ]
        if any(r.get("sim_time") for r in rounds):  # the run had a simulated clock (fedray/system/)
            drawn.append(draw_safely(accuracy_in_time, rounds, path=folder / "accuracy_sim_time.png"))
        if any("privacy" in r for r in rounds):
            drawn.append(draw_safely(privacy_spent, rounds, path=folder / "privacy.png"))
    if cross_site:
        drawn.append(draw_safely(cross_site_heatmap, cross_site, path=folder / "cross_site_val.png"))
    return [path for path in drawn if path is not None]


def draw_safely(draw: Callable[..., None], *args: Any, path: str | os.PathLike) -> Path | None:
    """`draw(*args, path)`; a failure is a warning and None: a picture is never worth a failed run."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        draw(*args, path)
        return path
    except Exception as err:
        log.warning("could not draw %s: %s: %s", path, type(err).__name__, err)
        plt.close("all")
        return None


def global_metrics(rounds: list[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """The global model after each round it was scored in (see eval_every): accuracy (validation
    and test) and test loss."""
    scored = [r for r in rounds if r["global"]]
    x = [r["round"] + 1 for r in scored]
    figure, (accuracy, loss) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("val_accuracy", "validation (pooled sites)"), ("test_accuracy", "test")):
        accuracy.plot(x, [r["global"][key] for r in scored], marker="o", label=label)
    accuracy.set(title="Global model accuracy", xlabel="round", ylabel="accuracy")
    accuracy.legend()
    loss.plot(x, [r["global"]["test_loss"] for r in scored], marker="o", color="tab:red")
    loss.set(title="Global model test loss", xlabel="round", ylabel="cross-entropy")
    _by_round(figure)
    _save(figure, path)


def accuracy_in_time(rounds: list[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Test accuracy against simulated hours (the federation's time: fedray/system/) beside against rounds."""
    scored = [r for r in rounds if r["global"]]
    accuracy = [r["global"]["test_accuracy"] for r in scored]
    figure, (by_time, by_round) = plt.subplots(1, 2, figsize=(10, 4))
    by_time.plot([r.get("sim_time", 0.0) / 3600 for r in scored], accuracy, marker="o")
    by_time.set(title="Test accuracy in simulated time", xlabel="simulated hours", ylabel="accuracy")
    by_time.grid(alpha=0.3)
    by_round.plot([r["round"] + 1 for r in scored], accuracy, marker="o")
    by_round.set(title="Test accuracy by round", xlabel="round", ylabel="accuracy")
    by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_round.grid(alpha=0.3)
    _save(figure, path)


def privacy_spent(rounds: list[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """A DP run's epsilon after each round (local DP: the most any site has spent), beside the test accuracy
    where the round was scored: what the accuracy cost in privacy; and the clip norm each round used."""
    private = [r for r in rounds if "privacy" in r]
    x = [r["round"] + 1 for r in private]
    figure, (spent, clip) = plt.subplots(1, 2, figsize=(10, 4))
    delta = private[-1]["privacy"]["delta"]
    spent.plot(x, [r["privacy"]["epsilon"] for r in private], marker="o", color="tab:purple", label="epsilon")
    spent.set(title=f"Privacy spent (delta {delta:g})", xlabel="round", ylabel="epsilon")
    scored = [r for r in private if r["global"]]
    if scored:
        accuracy = spent.twinx()
        accuracy.plot([r["round"] + 1 for r in scored], [r["global"]["test_accuracy"] for r in scored], marker=".",
                      color="tab:green", label="test accuracy")
        accuracy.set_ylabel("test accuracy")
        lines = spent.get_lines() + accuracy.get_lines()
        spent.legend(lines, [line.get_label() for line in lines], loc="upper left")
    clip.plot(x, [r["privacy"]["clip"] for r in private], marker="o")
    clip.set(title="Clip norm used", xlabel="round", ylabel="L2 norm")
    _by_round(figure)
    _save(figure, path)


def site_train_loss(rounds: list[Mapping[str, Any]], sites: list[str], path: str | os.PathLike) -> None:
    """Each site's training loss (mean over its last local epoch) per round; a round it missed is a gap.
    With many sites, their spread per round instead (a line each would be hundreds of lines, and
    seconds of drawing for a cross-device run's 1000 sites)."""
    x = [r["round"] + 1 for r in rounds]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    if len(sites) > MAX_LEGEND_SITES:  # past this, a legend hides the plot; the curves' spread is what shows
        losses = [[m["train_loss"] for m in r["sites"].values() if "train_loss" in m] for r in rounds]
        low, median, high = (np.array([np.percentile(v, q) if v else np.nan for v in losses]) for q in (10, 50, 90))
        axes.fill_between(x, low, high, color="tab:blue", alpha=0.25, label="10th-90th percentile of the round's sites")
        axes.plot(x, median, marker=".", color="tab:blue", label="median")
        axes.set(title=f"Site training loss ({len(sites)} sites)")
        axes.legend(fontsize="small")
    else:
        for site in sites:
            axes.plot(x, [r["sites"].get(site, {}).get("train_loss", np.nan) for r in rounds], marker="o", label=site)
        axes.set(title="Site training loss")
        axes.legend(ncol=max(1, len(sites) // 8), fontsize="small")
    axes.set(xlabel="round", ylabel="train loss (last local epoch)")
    _by_round(figure)
    _save(figure, path)


def _by_round(figure: plt.Figure) -> None:
    for axes in figure.axes:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole rounds only
        axes.grid(alpha=0.3)


def _save(figure: plt.Figure, path: str | os.PathLike) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def cross_site_heatmap(results: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | os.PathLike) -> None:
    """Rows: the sites whose data scored the model; columns: the model's owner; cells: its accuracy."""
    rows = list(results)
    columns = list(dict.fromkeys(owner for row in results.values() for owner in row))
    values = np.array([[_accuracy(results[r].get(c)) for c in columns] for r in rows])
    figure, axes = plt.subplots(figsize=(1.3 * len(columns) + 2.5, 0.6 * len(rows) + 2))
    image = axes.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    axes.set_xticks(range(len(columns)), [c.removeprefix("SRV_").removesuffix(".pt") for c in columns],
                    rotation=30, ha="right")
    axes.set_yticks(range(len(rows)), rows)
    axes.set_xlabel("model")
    axes.set_ylabel("validated on the data of")
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            axes.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    figure.colorbar(image, ax=axes, label="accuracy")
    axes.set_title("Cross-site validation")
    _save(figure, path)


def _accuracy(metrics: Optional[Mapping[str, float]]) -> float:
    accuracy = None if metrics is None else accuracy_of(metrics)
    return np.nan if accuracy is None else accuracy


MAX_HEATMAP_SITES = 100  # rows a label heat map shows; more sites: this many, evenly spaced, named on the axis


def partition_heatmap(sites: list[str], counts: np.ndarray, classes: list[Any], method: str,
                      path: str | os.PathLike) -> None:
    """Each site's samples per class (rows: sites, columns: classes, cells: counts), as papers show a partition,
    beside each site's total. Past MAX_HEATMAP_SITES sites, an evenly spaced subsample of them (the first and the
    last included), said in the title: a row per site of 3,400 writers would be a pixel each."""
    shown = np.unique(np.linspace(0, len(sites) - 1, min(len(sites), MAX_HEATMAP_SITES)).round().astype(int))
    rows, names = counts[shown], [sites[k] for k in shown]
    figure, (heat, totals) = plt.subplots(1, 2, figsize=(min(4 + 0.25 * len(classes), 16) + 2.5, 2 + 0.18 * len(shown)),
                                          gridspec_kw={"width_ratios": [4, 1]}, sharey=True)
    image = heat.imshow(rows, cmap="viridis", aspect="auto", interpolation="nearest", vmin=0)
    heat.set_xticks(range(len(classes)), [str(c) for c in classes], rotation=90 if len(classes) > 12 else 0,
                    fontsize="small" if len(classes) <= 40 else "xx-small")
    heat.set_yticks(range(len(shown)), names, fontsize="small" if len(shown) <= 40 else "xx-small")
    heat.set(xlabel="class", ylabel="site")
    figure.colorbar(image, ax=heat, label="samples", fraction=0.04, pad=0.02)
    subsample = "" if len(shown) == len(sites) else f": {len(shown)} of {len(sites)} sites, evenly spaced"
    heat.set_title(f"Labels per site (partition={method}{subsample})")
    totals.barh(range(len(shown)), rows.sum(axis=1), color="tab:gray")
    totals.set(title="samples", xlabel="train + val")
    totals.grid(axis="x", alpha=0.3)
    _save(figure, path)
