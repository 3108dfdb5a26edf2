"""Hydra multirun sweeps: a run dir per job, one Ray shared, failed jobs marked, and the sweep summary."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from fedray.records.sweep import RESULT_COLUMNS, write_sweep_summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_TIMEOUT = 400


@pytest.mark.slow
def test_grid_sweep_runs_every_combination_and_summarizes_them(tiny_cifar, tmp_path):
    missing = tmp_path / "no-data"
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_ADDRESS": ""}
    done = subprocess.run(
        [sys.executable, "-m", "fedray.run", "-m", f"data.root={missing},{tiny_cifar}", "lr=0.01,0.05",
         "data.download=false", "data.check_integrity=false", "num_clients=2", "rounds=1",
         f"hydra.sweep.dir={tmp_path}/sweep"],
        capture_output=True, text=True, timeout=SWEEP_TIMEOUT, cwd=tmp_path, env=env,
    )
    sweep = tmp_path / "sweep"
    # Jobs 0 and 1 have no data: each fails in one line, and the sweep goes on to the other two.
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("fedray:")]
    assert len(errors) == 3 and all("data.root=" in line for line in errors[:2]), done.stderr[-3000:]
    assert errors[2].startswith("fedray: 2 of 4 sweep jobs failed")
    assert "Traceback" not in done.stdout + done.stderr

    assert sorted(path.name for path in sweep.iterdir() if path.is_dir()) == ["0", "1", "2", "3"]
    summaries = [json.loads((sweep / str(job) / "summary.json").read_text()) for job in range(4)]
    assert [s["status"] for s in summaries] == ["failed", "failed", "completed", "completed"]
    assert summaries[3]["timings"]["ray_start"] < 1  # job 3 ran on the Ray job 2 started
    for job in (2, 3):
        assert (sweep / str(job) / "models" / "best_FL_global_model.pt").is_file()

    with open(sweep / "sweep_summary.csv") as f:
        header = next(csv.reader(f))
        f.seek(0)
        rows = list(csv.DictReader(f))
    assert header == ["job", "data.root", "lr", *RESULT_COLUMNS]  # fixed overrides (rounds=1 ...) are no columns
    assert [(row["job"], row["data.root"], row["lr"], row["status"]) for row in rows] == [
        ("0", str(missing), "0.01", "failed"), ("1", str(missing), "0.05", "failed"),
        ("2", tiny_cifar, "0.01", "completed"), ("3", tiny_cifar, "0.05", "completed"),
    ]
    for row, summary in zip(rows[2:], summaries[2:]):
        final = summary["rounds"][-1]["global"]
        assert float(row["final_test_accuracy"]) == pytest.approx(final["test_accuracy"])
        assert float(row["best_val_accuracy"]) == pytest.approx(final["val_accuracy"])
        assert float(row["wall_seconds"]) == pytest.approx(summary["wall_seconds"])
    assert "data.download=false" in rows[0]["error"]
    markdown = (sweep / "sweep_summary.md").read_text()
    assert markdown.count("| completed |") == 2 and markdown.count("| failed |") == 2


def test_summary_reads_job_dirs_in_job_order_and_marks_unfinished_jobs(tmp_path):
    def job(name, overrides, summary=None):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        if summary is not None:
            (tmp_path / name / "summary.json").write_text(json.dumps(summary))

    scores = {"val_accuracy": 0.4, "test_accuracy": 0.3, "test_loss": 1.5}
    done = {"status": "completed", "error": None, "rounds": [{"round": 0, "global": scores}],
            "best_round": 0, "wall_seconds": 12.5}
    job("10", ["seed=10", "rounds=1"], done)
    job("9", ["seed=9", "rounds=1", "+model.delay=2"], {**done, "status": "running"})
    job("8", ["seed=8", "rounds=1"])

    rows = write_sweep_summary(tmp_path, fixed_overrides=["seed=8,9,10", "rounds=1"])

    assert [(row["job"], row["seed"], row["status"]) for row in rows] == [
        ("8", "8", "failed"), ("9", "9", "failed"), ("10", "10", "completed")]
    assert rows[0]["error"].startswith("no readable summary.json") and rows[1]["error"] == "did not finish"
    assert rows[1]["model.delay"] == "2" and rows[0]["model.delay"] == ""
    assert rows[2]["best_test_accuracy"] == 0.3 and rows[2]["wall_seconds"] == 12.5
    assert (tmp_path / "sweep_summary.csv").read_text().splitlines()[0].startswith("job,seed,model.delay,status")
    assert "Best validation accuracy: job 10, 0.4000" in (tmp_path / "sweep_summary.md").read_text()


def test_a_sweep_over_algorithms_and_alphas_is_tabled_as_flare_does(tmp_path):
    for number, (algorithm, alpha, accuracy) in enumerate(
            [("fedavg", "0.1", 0.5), ("fedavg", "1.0", 0.7), ("scaffold", "0.1", 0.6), ("scaffold", "1.0", None)]):
        job = tmp_path / str(number)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
            ["+experiment=cifar10_sim", f"algorithm={algorithm}", f"partition.alpha={alpha}"]))
        if accuracy is not None:
            rounds = [{"round": 0, "global": {"val_accuracy": accuracy, "test_accuracy": accuracy, "test_loss": 1.0}}]
            (job / "summary.json").write_text(json.dumps({"status": "completed", "error": None, "rounds": rounds,
                                                          "best_round": 0, "wall_seconds": 3.0}))
    write_sweep_summary(tmp_path, fixed_overrides=["+experiment=cifar10_sim", "algorithm=fedavg,scaffold",
                                                   "partition.alpha=0.1,1.0"])
    markdown = (tmp_path / "sweep_summary.md").read_text()
    assert ("| algorithm | alpha=1.0 | alpha=0.1 |\n|---|---|---|\n| fedavg | 0.7000 | 0.5000 |\n"
            "| scaffold |  | 0.6000 |\n") in markdown
