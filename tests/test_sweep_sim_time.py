"""The sweep summary's simulated-time column: a sweep whose runs ran on the simulated clock shows each run's
final simulated time in hours; a sweep without a clock has no such column."""

import csv
import json

import yaml

from fedray.records.sweep import write_sweep_summary


def _job(folder, seed, sim_seconds):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}", "system=lognormal"]))
    scores = {"val_accuracy": 0.4, "test_accuracy": 0.3, "test_loss": 1.5}
    (folder / "summary.json").write_text(json.dumps({
        "status": "completed", "error": None, "best_round": 0, "wall_seconds": 12.5, "sim_seconds": sim_seconds,
        "rounds": [{"round": 0, "global": scores, "sim_seconds": sim_seconds, "sim_time": sim_seconds}]}))


def test_runs_on_the_clock_get_a_sim_hours_column_and_runs_without_none(tmp_path):
    _job(tmp_path / "clock" / "0", 0, 5400.0)
    _job(tmp_path / "clock" / "1", 1, 1800.0)
    rows = write_sweep_summary(tmp_path / "clock", fixed_overrides=["seed=0,1", "system=lognormal"])
    assert [row["sim_hours"] for row in rows] == [1.5, 0.5]
    with open(tmp_path / "clock" / "sweep_summary.csv") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0])[list(table[0]).index("wall_seconds") + 1] == "sim_hours" and table[0]["sim_hours"] == "1.5"
    assert "| 1.5000 |" in (tmp_path / "clock" / "sweep_summary.md").read_text()

    _job(tmp_path / "uniform" / "0", 0, 0.0)  # system=uniform: no simulated time passes
    write_sweep_summary(tmp_path / "uniform", fixed_overrides=["seed=0", "system=lognormal"])
    assert "sim_hours" not in (tmp_path / "uniform" / "sweep_summary.csv").read_text()
