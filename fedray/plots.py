"""Pictures of a run, drawn with matplotlib (off-screen) into PNG files."""

from __future__ import annotations

import logging
import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in Ray jobs
logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font-cache notice is not ours to show
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def cross_site_heatmap(results: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | os.PathLike) -> None:
    """Rows: the sites whose data scored the model; columns: the model's owner; cells: val_accuracy."""
    rows = list(results)
    columns = list(dict.fromkeys(owner for row in results.values() for owner in row))
    values = np.array([[results[r].get(c, {}).get("val_accuracy", np.nan) for c in columns] for r in rows])
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
    figure.colorbar(image, ax=axes, label="val_accuracy")
    axes.set_title("Cross-site validation")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
