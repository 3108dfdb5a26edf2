"""`python -m fedray.records.report RUN_DIR`: a finished run's summary, or a table of a Hydra multirun's runs.

It reads only what runs wrote: `summary.json`, and for a sweep each run's
`.hydra/overrides.yaml` (the values swept). Rounds are counted from 1, as the
run's log lines count them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from omegaconf import OmegaConf

from fedray.fl_model import accuracy_of
from fedray.system import DROPPED, LATE, OVER_SELECTED

SUMMARY = "summary.json"
OVERRIDES = Path(".hydra") / "overrides.yaml"


class ReportError(ValueError):
    """Nothing to report; the message is one line."""


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedray.records.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run dir (holds summary.json) or a Hydra multirun dir")
    args = parser.parse_args(argv)
    try:
        print(report(args.run_dir))
    except ReportError as err:
        print(f"fedray.records.report: {err}", file=sys.stderr)
        sys.exit(2)


def report(path: Path) -> str:
    """The text for a run dir, or for a multirun dir (its numbered runs)."""
    if (path / SUMMARY).is_file():
        return f"run: {path}\n" + run_report(_load(path / SUMMARY))
    runs = sweep_runs(path)
    if runs:
        return sweep_report(path, runs)
    raise ReportError(f"{path}: neither a run dir ({SUMMARY}) nor a multirun dir (runs with {SUMMARY})")


# The simulated clock's failure kinds (fedray/system/): sites left out before training, counted, not listed.
SPARED_KINDS = (LATE, OVER_SELECTED, DROPPED)


def run_report(summary: Mapping[str, Any]) -> str:
    config, rounds = summary["config"], summary["rounds"]
    lines = ["config: " + "  ".join(f"{key}={value}" for key, value in _highlights(config).items())]
    if summary.get("wall_seconds") is not None:
        lines.append(f"wall time: {summary['wall_seconds']:.1f} s")
    if not rounds:
        lines.append("no round finished")
    else:
        private = any("privacy" in r for r in rounds)  # a DP run: epsilon spent after each round
        simulated = any(r.get("sim_time") for r in rounds)  # a run on the simulated clock: its hours after each round
        lines += ["", _table(
            ["round", "val_acc", "test_acc", "test_loss", "sites", "train_loss", "seconds", *(["sim_hours"] if simulated else []),
             *(["epsilon"] if private else [])],
            [[r["round"] + 1, r["global"].get("val_accuracy"), r["global"].get("test_accuracy"), r["global"].get("test_loss"),
              f"{len(r['sites'])}/{config['num_clients']}", _mean(m["train_loss"] for m in r["sites"].values()),
              f"{r['seconds']:.1f}", *([f"{r.get('sim_time', 0.0) / 3600:.3f}"] if simulated else []),
              *([(r.get("privacy") or {}).get("epsilon")] if private else [])] for r in rounds],
        )]
        for r in rounds:
            spared: dict[str, int] = {}  # the clock's: sites that never trained, counted by kind
            for site, failure in r["failures"].items():
                if failure["kind"] in SPARED_KINDS:
                    spared[failure["kind"]] = spared.get(failure["kind"], 0) + 1
                else:
                    lines.append(f"round {r['round'] + 1}: {site} {failure['kind']}: {failure['message']}")
            if spared:
                lines.append(f"round {r['round'] + 1}: never trained: "
                             + ", ".join(f"{count} {kind}" for kind, count in spared.items()))
        best = _best(summary)
        if best is not None:
            lines += ["", f"best round {best['round'] + 1}: val_acc {best['global']['val_accuracy']:.4f}  "
                          f"test_acc {best['global']['test_accuracy']:.4f}"]
    if summary.get("privacy"):
        lines += ["", privacy_line(summary["privacy"])]
    cross_site = summary.get("cross_site") or {}
    if cross_site.get("results"):
        lines += ["", "cross-site validation (accuracy; rows: data of, columns: model)",
                  cross_site_table(cross_site["results"])]
    for failure in cross_site.get("failures", []):
        lines.append(f"cross-site: {failure['site']} failed to {failure['task']} ({failure['kind']}: {failure['message']})")
    return "\n".join(lines)


def privacy_line(privacy: Mapping[str, Any]) -> str:
    """What a DP run spent: epsilon at delta, by which accountant; local DP: the sites' range."""
    line = (f"privacy ({privacy['mode']} DP, {privacy['accountant']}): epsilon {privacy['epsilon']:.4g} at delta "
            f"{privacy['delta']:g}, noise_multiplier {privacy['noise_multiplier']:.4g}")
    if privacy.get("sites"):
        spent = [site["epsilon"] for site in privacy["sites"].values()]
        line += f"; per site from {min(spent):.4g} to {max(spent):.4g} over {len(spent)} sites"
    elif "rounds_spent" in privacy:
        line += f" over {privacy['rounds_spent']} round(s)"
    return line + (f"\n{privacy['stopped']}" if privacy.get("stopped") else "")


def sweep_runs(path: Path) -> dict[str, Path]:
    """A multirun dir's runs (Hydra numbers them 0, 1, ...), by name, in number order."""
    if not path.is_dir():
        return {}
    runs = [child for child in path.iterdir() if (child / SUMMARY).is_file()]
    runs.sort(key=lambda child: (not child.name.isdigit(), int(child.name) if child.name.isdigit() else 0, child.name))
    return {child.name: child for child in runs}


def sweep_report(path: Path, runs: Mapping[str, Path]) -> str:
    """One row per run: the swept values, final and best accuracy, wall time."""
    overrides = {name: _overrides(run) for name, run in runs.items()}
    swept = _swept_keys(overrides.values())
    rows = []
    for name, run in runs.items():
        summary = _load(run / SUMMARY)
        final = summary["rounds"][-1]["global"] if summary["rounds"] else {}
        best = _best(summary)
        wall = summary.get("wall_seconds")
        rows.append(
            [name, *(overrides[name].get(key, "") for key in swept), len(summary["rounds"]),
             final.get("val_accuracy"), final.get("test_accuracy"),
             best["round"] + 1 if best else None, best["global"]["val_accuracy"] if best else None,
             best["global"]["test_accuracy"] if best else None, None if wall is None else f"{wall:.1f}"]
        )
    headers = ["run", *swept, "rounds", "final_val_acc", "final_test_acc", "best_round", "best_val_acc",
               "best_test_acc", "wall_s"]
    return f"multirun: {path} ({len(runs)} runs)\n\n" + _table(headers, rows)


def _highlights(config: Mapping[str, Any]) -> dict[str, Any]:
    partition = config["partition"]["name"]
    if partition == "dirichlet":
        partition += f"(alpha={config['partition']['alpha']})"
    keys = {"inner_dirichlet": ("alpha", "sizes"), "shard": ("shards_per_site",), "pathological": ("classes_per_site",)}
    if partition in keys:  # the keys that shape the split, as dirichlet's alpha
        partition += "(" + ", ".join(f"{key}={config['partition'][key]}" for key in keys[partition]) + ")"
    return {
        "num_clients": config["num_clients"],
        "rounds": config["rounds"],
        "data": config["data"]["name"],
        "partition": partition,
        "lr": config["lr"],
        "local_epochs": config["local_epochs"],
        "seed": config["seed"],
        # A run on the simulated clock (a run of before system= has no such key: uniform)
        **({"system": system} if (system := (config.get("system") or {}).get("name", "uniform")) != "uniform" else {}),
    }


def _best(summary: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    return next((r for r in summary["rounds"] if r["round"] == summary.get("best_round")), None)


def _overrides(run: Path) -> dict[str, str]:
    """`key=value` overrides of a Hydra run, as {key: value}."""
    path = run / OVERRIDES
    if not path.is_file():
        return {}
    entries = OmegaConf.to_container(OmegaConf.load(path)) or []
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def _swept_keys(overrides: Iterable[Mapping[str, str]]) -> list[str]:
    """The keys whose values differ between runs; all keys when none differ (a sweep of one value)."""
    overrides = list(overrides)
    keys = list(dict.fromkeys(key for run in overrides for key in run))
    varying = [key for key in keys if len({run.get(key) for run in overrides}) > 1]
    return varying or keys


def _mean(values: Iterable[float]) -> Optional[float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """Columns aligned right; floats with 4 decimals; None as '-'."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    return "\n".join("  ".join(f"{cell:>{w}}" for cell, w in zip(line, widths)) for line in [headers, *cells])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: {err}") from None


def cross_site_table(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """The cross-site matrix as text: a row per evaluating site, a column per model."""
    columns = list(dict.fromkeys(owner for row in results.values() for owner in row))
    names = [c.removeprefix("SRV_").removesuffix(".pt") for c in columns]
    widths = [max(len(name), 6) + 2 for name in names]
    lines = [" " * 8 + "".join(f"{name:>{w}}" for name, w in zip(names, widths))]
    for site, row in results.items():
        cells = [_accuracy_cell(row.get(c)) for c in columns]
        lines.append(f"{site:<8}" + "".join(f"{cell:>{w}}" for cell, w in zip(cells, widths)))
    return "\n".join(lines)


def _accuracy_cell(metrics: Optional[Mapping[str, float]]) -> str:
    accuracy = None if metrics is None else accuracy_of(metrics)
    return "-" if accuracy is None else f"{accuracy:.4f}"


if __name__ == "__main__":
    main()
