"""What a run shows while and after it runs: TensorBoard files, the status line, plots/, fedray.records.report."""

import io
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedray import run_job
from fedray.driver.progress import Progress
from fedray.records import report
from fedray.records.plots import draw_run

pytestmark = pytest.mark.usefixtures("ray_session")

REPO = Path(__file__).resolve().parent.parent
SITES = ["site-1", "site-2", "site-3"]
# Slow enough steps (18 a round) that a round outlasts fedray.site.metric_stream.SEND_SECONDS: points arrive while sites train.
SLOW = ["model._target_=tests.fault_models.SlowNet", "+model.delay=0.15"]


@pytest.fixture(scope="module")
def finished_run(job_config, tmp_path_factory):
    """One 3-site, 2-round job, with the events the driver relayed."""
    run_dir = tmp_path_factory.mktemp("run")
    events = []
    summary = run_job(job_config(*SLOW), run_dir, on_event=events.append)
    return run_dir, summary, events


def _scalars(folder: Path) -> dict[str, list]:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}


def test_tensorboard_has_the_global_metrics_once_per_round(finished_run):
    run_dir, summary, _ = finished_run
    scalars = _scalars(run_dir / "tb")
    assert set(scalars) == {"val_accuracy", "test_accuracy", "test_loss", "round_seconds", "sites_train_loss",
                            "sites_answered"}
    for tag, points in scalars.items():
        assert [p.step for p in points] == [0, 1], tag
    for point, entry in zip(scalars["test_accuracy"], summary["rounds"]):
        assert point.value == pytest.approx(entry["global"]["test_accuracy"])
    for point, entry in zip(scalars["sites_train_loss"], summary["rounds"]):
        sites = entry["sites"].values()
        weighted = sum(m["train_loss"] * m["num_steps"] for m in sites) / sum(m["num_steps"] for m in sites)
        assert point.value == pytest.approx(weighted)
    assert [p.value for p in scalars["sites_answered"]] == [3, 3]


def test_tensorboard_has_each_sites_loss_streamed_while_it_trained(finished_run):
    run_dir, summary, _ = finished_run
    for site in SITES:
        scalars = _scalars(run_dir / "tb" / site)
        assert set(scalars) == {"train_loss", "received_val_accuracy", "local_val_accuracy", "num_steps", "seconds"}
        for tag in ("received_val_accuracy", "local_val_accuracy", "num_steps", "seconds"):
            assert [p.step for p in scalars[tag]] == [0, 1], (site, tag)

        steps_per_round = summary["rounds"][0]["sites"][site]["num_steps"]
        loss = scalars["train_loss"]
        steps = [p.step for p in loss]
        assert steps == sorted(set(steps)) and steps[-1] == 2 * steps_per_round  # one curve across rounds
        for r in (0, 1):
            in_round = [p for p in loss if r * steps_per_round < p.step <= (r + 1) * steps_per_round]
            assert len(in_round) > 1, (site, r)
            # Written by the driver as they came, not all at the round's end.
            assert in_round[-1].wall_time - in_round[0].wall_time > 0.4, (site, r)


def test_sites_done_are_reported_while_a_round_runs(finished_run):
    _, _, events = finished_run
    kinds = [e["type"] for e in events]
    for r in (0, 1):
        done = [e for e in events if e["type"] == "site_done" and e["round"] == r]
        assert sorted(e["site"] for e in done) == SITES and all(e["ok"] for e in done)
        round_at = next(i for i, e in enumerate(events) if e["type"] == "round" and e["round"] == r)
        assert all(events.index(e) < round_at for e in done)
    assert kinds[-1] == "cross_site"


def test_status_line_on_a_terminal_and_one_log_line_per_round_otherwise(finished_run, caplog):
    _, _, events = finished_run
    terminal = io.StringIO()
    live = Progress(terminal, live=True)
    for event in events:
        live(event)
    live.close()
    shown = terminal.getvalue()
    assert "round 1/2: 3/3 sites done" in shown and "round 2/2: 1/3 sites done; round 1: val_acc" in shown
    assert shown.endswith("\r\033[K")  # cleared at the end

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fedray"):
        quiet = Progress(io.StringIO(), live=False)
        for event in events:
            quiet(event)
    round_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("round ")]
    assert len(round_lines) == 2 and round_lines[1].startswith("round 2/2  val_acc")
    assert quiet.out.getvalue() == ""


def test_plots_are_drawn_at_the_end(finished_run):
    run_dir, _, _ = finished_run
    for name in ("global_metrics.png", "site_train_loss.png", "cross_site_val.png"):
        path = run_dir / "plots" / name
        assert path.stat().st_size > 10_000, name
        height, width, _ = matplotlib.image.imread(path).shape
        assert height > 300 and width > 300, name


def test_a_plot_that_fails_is_a_warning(tmp_path, caplog):
    summary = {"config": {"num_clients": 2}, "rounds": [{"round": 0, "global": {"val_accuracy": 0.5}, "sites": {}}]}
    with caplog.at_level(logging.WARNING):
        drawn = draw_run(summary, tmp_path)
    assert [p.name for p in drawn] == ["site_train_loss.png"]
    assert "could not draw" in caplog.text and "global_metrics.png" in caplog.text


def _report(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedray.records.report", str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_report_of_a_run(finished_run):
    run_dir, summary, _ = finished_run
    result = _report(run_dir)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "num_clients=3  rounds=2  data=cifar10  partition=iid  lr=0.05  local_epochs=2  seed=0" in text
    rows = [line.split() for line in text.splitlines() if line.strip()[:1] in ("1", "2")]
    assert [row[0] for row in rows] == ["1", "2"] and all(row[4] == "3/3" for row in rows)
    best = summary["rounds"][summary["best_round"]]["global"]
    assert f"best round {summary['best_round'] + 1}: val_acc {best['val_accuracy']:.4f}" in text
    table = text.split("cross-site validation")[1].splitlines()
    assert "FL_global_model" in table[1] and [line.split()[0] for line in table[2:5]] == SITES


def test_report_of_a_multirun(finished_run, job_config, tmp_path):
    first, first_summary, _ = finished_run
    second = tmp_path / "second"
    second_summary = run_job(job_config("rounds=1", "lr=0.1", "workflows.cross_site_validate.enabled=false"), second)
    sweep = tmp_path / "multirun"
    for number, (run_dir, overrides) in enumerate([(first, "lr=0.05"), (second, "lr=0.1")]):
        shutil.copytree(run_dir, sweep / str(number))
        (sweep / str(number) / ".hydra").mkdir()
        (sweep / str(number) / ".hydra" / "overrides.yaml").write_text(f"- {overrides}\n- data.download=false\n")

    result = _report(sweep)
    assert result.returncode == 0, result.stderr
    header, *rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert header == ["run", "lr", "rounds", "final_val_acc", "final_test_acc", "best_round", "best_val_acc",
                      "best_test_acc", "wall_s"]
    assert [row[:3] for row in rows] == [["0", "0.05", "2"], ["1", "0.1", "1"]]
    for row, summary in zip(rows, [first_summary, second_summary]):
        assert row[4] == f"{summary['rounds'][-1]['global']['test_accuracy']:.4f}"
        assert row[8] == f"{summary['wall_seconds']:.1f}"


def test_report_of_a_dir_without_runs_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        report.main([str(tmp_path)])
    assert stopped.value.code == 2 and "neither a run dir" in capsys.readouterr().err


def test_many_sites_get_round_summaries_in_tb_not_a_folder_each(job_config, tmp_path):
    """Beyond PER_SITE_LIMIT sites (or with tensorboard.per_site=false) nothing is streamed and no
    tb/site-k/ is written; the server's folder sums each round's sites up instead."""
    summary = run_job(job_config("num_clients=65", "clients_per_round=4", "rounds=2",
                                 "workflows.cross_site_validate.enabled=false"), tmp_path, on_event=lambda e: None)
    assert summary["status"] == "completed"
    assert sorted(path.name for path in (tmp_path / "tb").iterdir() if path.is_dir()) == []
    scalars = _scalars(tmp_path / "tb")
    assert [p.value for p in scalars["sites_answered"]] == [4, 4]
    assert all(p.value > 0 for p in scalars["sites_train_loss"])


def test_per_site_curves_default_and_override():
    from fedray.config import PER_SITE_LIMIT, per_site_curves

    def job(num_clients, per_site=None, script=None):
        return {"num_clients": num_clients, "tensorboard": {"per_site": per_site}, "site": {"script": script}}

    assert per_site_curves(job(PER_SITE_LIMIT)) and not per_site_curves(job(PER_SITE_LIMIT + 1))
    assert per_site_curves(job(1000, script="train.py"))  # a script's own metrics are the point of its curves
    assert per_site_curves(job(1000, per_site=True)) and not per_site_curves(job(3, per_site=False))
    assert per_site_curves({"num_clients": 3, "site": {"script": None}})  # a run saved before the key existed


def test_summary_is_one_line_while_rounds_run_and_indented_at_the_end(tmp_path):
    """While rounds run, summary.json is rewritten on one line (json's indented output is its slow pure-Python
    encoder, quadratic in rounds); the run's last write is indented. Both read back the same."""
    import json

    import numpy as np

    from fedray.records.recorder import RunRecorder

    recorder = RunRecorder(tmp_path, per_site=False)
    event = {"round": 0, "num_rounds": 2, "global": {}, "sites": {"site-1": {"train_loss": 1.0, "num_steps": 3}},
             "failures": {}, "seconds": 0.1, "train_seconds": 0.1, "evaluation_seconds": 0.0, "is_best": False}
    recorder.record_round(event, {"w": np.zeros(2, dtype=np.float32)})
    running = (tmp_path / "summary.json").read_text()
    assert len(running.splitlines()) == 1
    recorder.write(wall_seconds=1.0)  # what finish() writes before it draws the plots
    final = (tmp_path / "summary.json").read_text()
    assert len(final.splitlines()) > 10
    assert json.loads(final)["rounds"] == json.loads(running)["rounds"]
