"""A sweep's results side by side: `sweep_summary.csv` and `sweep_summary.md` at its root.

`SweepSummary` is a Hydra callback (registered in conf/config.yaml under hydra.callbacks);
when a multirun ends it reads every job dir's `summary.json` and `.hydra/overrides.yaml`,
so it works with any sweeper (grid, Optuna, Ax) and any launcher whose job dirs it can read.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fedray.records.atomic import write_atomic

log = logging.getLogger("fedray")

RESULT_COLUMNS = (
    "status",
    "rounds",
    "final_test_accuracy",
    "best_round",
    "best_val_accuracy",
    "best_test_accuracy",
    "wall_seconds",
    "error",
)


# What a parallel launcher (hydra/launcher=fedray_ray) adds to each job's overrides: where it ran, not what it tried.
LAUNCHER_KEYS = frozenset({"ray.share"})

# FLARE's cifar10-sim table: one row per algorithm, one column per Dirichlet alpha.
TABLE_ROWS, TABLE_COLUMNS, TABLE_VALUE = "algorithm", "partition.alpha", "final_test_accuracy"


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_sweep_summary(sweep_dir, fixed_overrides=config.hydra.overrides.task)
        log.info("sweep summary of %d jobs: %s", len(rows), sweep_dir / "sweep_summary.md")
        for line in algorithm_table(rows):
            log.info("%s", line)
        tracking = OmegaConf.select(config, "tracking")
        if tracking is not None and tracking.name == "mlflow":
            _end_mlflow_sweep(OmegaConf.to_container(tracking), sweep_dir)


def _end_mlflow_sweep(tracking: dict[str, Any], sweep_dir: Path) -> None:
    """tracking=mlflow: the sweep's parent run gets sweep_summary.* and ends (a failure is a warning)."""
    from fedray.records.tracking import shown

    try:
        from fedray.records.mlflow_tracker import end_sweep

        end_sweep(tracking, tracking["group"] or shown(sweep_dir), sweep_dir)
    except Exception as err:  # noqa: BLE001 - the sweep's results are on disk whatever MLflow does
        log.warning("tracking=mlflow: the sweep's parent run was not ended (%s: %s)", type(err).__name__, err)


def algorithm_table(table: list[dict[str, Any]]) -> list[str]:
    """FLARE's layout of a sweep over `algorithm` and `partition.alpha` (markdown lines; none for
    other sweeps): each cell the final global model's test accuracy (CIFAR-10's test set is what
    FLARE validates on), alphas from the mildest skew to the strongest as FLARE lists them."""
    if not table or any(key not in table[0] for key in (TABLE_ROWS, TABLE_COLUMNS)):
        return []
    algorithms = list(dict.fromkeys(row[TABLE_ROWS] for row in table))
    alphas = sorted(dict.fromkeys(row[TABLE_COLUMNS] for row in table), key=_as_number, reverse=True)
    cells = {(row[TABLE_ROWS], row[TABLE_COLUMNS]): row.get(TABLE_VALUE) for row in table
             if row["status"] == "completed"}
    lines = ["| algorithm | " + " | ".join(f"alpha={alpha}" for alpha in alphas) + " |",
             "|---|" + "---|" * len(alphas)]
    for algorithm in algorithms:
        values = [cells.get((algorithm, alpha)) for alpha in alphas]
        lines.append(f"| {algorithm} | " + " | ".join("" if v is None else f"{v:.4f}" for v in values) + " |")
    return lines


def write_sweep_summary(sweep_dir: Path, fixed_overrides: Iterable[str] = ()) -> list[dict[str, Any]]:
    """One row per job dir under `sweep_dir`: its swept values and results; returns the rows.

    Swept values are a job's overrides of keys that the sweep's own overrides do not fix
    (`fixed_overrides`, e.g. `rounds=50` for every job), so `lr=0.01,0.05` shows as an `lr` column.
    """
    fixed = _fixed_keys(list(fixed_overrides))
    job_dirs = sorted((path.parent.parent for path in sweep_dir.glob("**/.hydra/overrides.yaml")), key=_natural)
    rows = [_row(job_dir, sweep_dir, fixed) for job_dir in job_dirs]
    swept = list(dict.fromkeys(key for row in rows for key in row["swept"]))
    table = [{"job": row["job"], **{key: row["swept"].get(key, "") for key in swept}, **row["results"]} for row in rows]
    columns = ["job", *swept, *RESULT_COLUMNS]
    if any(row.get("sim_hours") is not None for row in table):  # runs on the simulated clock (system=)
        columns.insert(columns.index("wall_seconds") + 1, "sim_hours")
    write_atomic(sweep_dir / "sweep_summary.csv", _csv(table, columns).encode())
    write_atomic(sweep_dir / "sweep_summary.md", _markdown(table, columns).encode())
    return table


def _fixed_keys(overrides: list[str]) -> set[str]:
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return set()  # then every override shows as a column: more than needed, nothing lost
    return {override.key_or_group for override in parsed if not override.is_sweep_override()}


def _row(job_dir: Path, sweep_dir: Path, fixed: set[str]) -> dict[str, Any]:
    overrides = OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml"))
    swept = {}
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key not in fixed and key not in LAUNCHER_KEYS:
            swept[key] = value
    return {"job": job_dir.relative_to(sweep_dir).as_posix(), "swept": swept, "results": _results(job_dir)}


def _results(job_dir: Path) -> dict[str, Any]:
    try:
        summary = json.loads((job_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {"status": "failed", "error": f"no readable summary.json; see {job_dir.name}/run.log"}
    rounds = summary.get("rounds", [])
    by_round = {entry["round"]: entry["global"] for entry in rounds}
    best: dict[str, Optional[float]] = by_round.get(summary.get("best_round"), {})
    return {
        # A job killed mid-run never got to say: it is no less failed.
        "status": summary.get("status") if summary.get("status") == "completed" else "failed",
        "rounds": len(rounds),
        "final_test_accuracy": rounds[-1]["global"].get("test_accuracy") if rounds else None,
        "best_round": summary.get("best_round"),
        "best_val_accuracy": best.get("val_accuracy"),
        "best_test_accuracy": best.get("test_accuracy"),
        "wall_seconds": summary.get("wall_seconds"),
        # The run's final simulated time (fedray/system/), in hours; none without a clock (system=uniform: 0 s).
        "sim_hours": summary["sim_seconds"] / 3600 if summary.get("sim_seconds") else None,
        "error": summary.get("error") or ("" if summary.get("status") == "completed" else "did not finish"),
    }


def _csv(table: list[dict[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if row.get(key) is None else row.get(key) for key in columns} for row in table)
    return out.getvalue()


def _markdown(table: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(key: str, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.1f}" if key == "wall_seconds" else f"{value:.4f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(key, row.get(key)) for key in columns) + " |" for row in table]
    scored = [row for row in table if row["status"] == "completed" and row.get("best_val_accuracy") is not None]
    if scored:
        top = max(scored, key=lambda row: row["best_val_accuracy"])
        lines += ["", f"Best validation accuracy: job {top['job']}, {top['best_val_accuracy']:.4f} "
                      f"(test accuracy {top['best_test_accuracy']:.4f}, best_round {top['best_round']})."]
    pivot = algorithm_table(table)
    if pivot:
        lines += ["", f"Final test accuracy by {TABLE_ROWS} and {TABLE_COLUMNS} (FLARE's cifar10-sim layout):", "",
                  *pivot]
    failed = sum(row["status"] != "completed" for row in table)
    lines += ["", f"{len(table)} jobs, {failed} failed."]
    return "# Sweep summary\n\n" + "\n".join(lines) + "\n"


def _as_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("-inf")


def _natural(path: Path) -> list[Any]:
    """Job 10 after job 9."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]
