"""Trackers (tracking=mlflow|wandb): what the driver's run-folder writer sends them, read back from the files each
library writes (MLflow's SQLite store through its client; W&B's offline run file, parsed as W&B writes it)."""

from __future__ import annotations

import json
import logging
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedray import ConfigError, load_config
from fedray.flare.job_folder import translate
from fedray.records.recorder import RunRecorder
from fedray.records.sweep import SweepSummary

JOBS = Path(__file__).resolve().parent / "flare_jobs"
PARAMS = {"w": np.zeros(3, dtype=np.float32)}
CROSS_SITE = {"site-1": {"site-1": {"accuracy": 0.5}, "SRV_FL_global_model.pt": {"accuracy": 0.625}},
              "site-2": {"site-1": {"accuracy": 0.25}, "SRV_FL_global_model.pt": {"accuracy": 0.75}}}


def _job(tracking: dict, **rest) -> dict:
    settings = {"name": "none", "uri": None, "experiment": "fedray", "run_name": None, "group": None,
                "mode": "offline", "tags": {}}
    return {"job_id": "fedray-test", "num_clients": 2, "workflows": {"scatter_and_gather": {"num_rounds": 2}},
            "tracking": {**settings, **tracking}, **rest}


def _round(number: int, accuracy: float) -> dict:
    sites = {site: {"val_accuracy": accuracy - 0.1, "local_val_accuracy": accuracy, "num_steps": 10,
                    "train_loss": 2.0 - number, "seconds": 0.5} for site in ("site-1", "site-2")}
    return {"round": number, "global": {"val_accuracy": accuracy, "test_accuracy": accuracy - 0.05, "test_loss": 1.5},
            "sites": sites, "failures": {}, "seconds": 1.25, "is_best": True, "sim_seconds": 30.0,
            "sim_time": 30.0 * (number + 1)}


def _record_a_run(run_dir: Path, tracking: dict) -> dict:
    """Two rounds, streamed points, cross-site evaluation and the end, as the driver records them."""
    recorder = RunRecorder(run_dir, simulated=True)
    recorder.summary["config"] = job = _job(tracking)
    recorder.track(job)
    recorder.record_points([("site-1", "train_loss", 2.5, 3), ("site-1", "train_loss", 2.25, 6)])
    recorder.record_round(_round(0, 0.5), PARAMS)
    recorder.record_round(_round(1, 0.75), PARAMS)
    recorder.record_cross_site({"results": CROSS_SITE, "failures": {}})
    recorder.summary.update(status="completed")
    return recorder.finish(wall_seconds=3.0)


def test_an_mlflow_run_holds_the_rounds_the_config_and_the_run_folder(tmp_path, monkeypatch, caplog):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the default store: <working folder>/mlflow.db
    sweep = tmp_path / "multirun" / "day"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}")  # Hydra's mark of a sweep folder: its jobs share a parent run
    with caplog.at_level(logging.WARNING, logger="fedray"):
        for job in ("0", "1"):
            _record_a_run(sweep / job, {"name": "mlflow", "tags": {"team": "fl"}})
    assert not [r for r in caplog.records if "tracking=mlflow" in r.getMessage()]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fedray")
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["multirun/day", "multirun/day/0", "multirun/day/1"]
    parent, child = runs["multirun/day"], runs["multirun/day/0"]
    assert {runs[name].data.tags["mlflow.parentRunId"] for name in ("multirun/day/0", "multirun/day/1")} == {parent.info.run_id}
    assert child.info.status == "FINISHED" and child.data.tags["team"] == "fl"
    assert child.data.params["num_clients"] == "2" and child.data.params["workflows.scatter_and_gather.num_rounds"] == "2"

    def history(key):
        return [(m.step, m.value) for m in sorted(client.get_metric_history(child.info.run_id, key), key=lambda m: m.step)]

    assert history("val_accuracy") == [(0, 0.5), (1, 0.75)]
    assert history("site-2/received_val_accuracy") == [(0, pytest.approx(0.4)), (1, pytest.approx(0.65))]
    assert history("site-1/train_loss") == [(3, 2.5), (6, 2.25)]  # the streamed curve, by the site's local step
    assert history("sites_train_loss") == [(0, 2.0), (1, 1.0)]
    assert history("sim_time") == [(0, 30.0), (1, 60.0)]  # the simulated clock's
    assert history("cross_site/SRV_FL_global_model.pt/site-2/accuracy") == [(0, 0.75)]
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"summary.json", "rounds.jsonl", "models", "plots", "cross_site_val"} <= artifacts
    assert "checkpoint" not in artifacts

    # The sweep's end: its summary goes to the parent run, which ends.
    (sweep / "0" / ".hydra").mkdir()
    (sweep / "0" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=0"]))
    SweepSummary().on_multirun_end(_sweep_config(sweep, {"name": "mlflow", "uri": None, "experiment": "fedray",
                                                         "group": None}))
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"sweep_summary.csv", "sweep_summary.md"}


def _sweep_config(sweep: Path, tracking: dict):
    from omegaconf import OmegaConf

    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "overrides": {"task": ["seed=0"]}},
                             "tracking": tracking})


def test_a_failing_tracker_is_one_warning_and_the_run_goes_on(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a store under a file: no folder can be made there
    with caplog.at_level(logging.WARNING, logger="fedray"):
        summary = _record_a_run(tmp_path / "run", {"name": "mlflow", "uri": f"sqlite:///{blocked}/sub/mlflow.db"})
    warnings = [r.getMessage() for r in caplog.records if "tracking=mlflow failed" in r.getMessage()]
    assert len(warnings) == 1 and "the run goes on without it" in warnings[0]
    assert summary["status"] == "completed"
    assert len((tmp_path / "run" / "rounds.jsonl").read_text().splitlines()) == 2


def _wandb_records(run_file: Path):
    """The records of W&B's offline run file (`run-<id>.wandb`): a header (`:W&B`, magic 0xBEE1, version 0), then
    LevelDB's log format, 32 KiB blocks of chunks (crc32c, length, type: full/first/middle/last), each record a
    protobuf `Record`."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = run_file.read_bytes()
    assert data[:7] == b":W&B" + struct.pack("<HB", 0xBEE1, 0)
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # full, last
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_a_wandb_offline_run_holds_the_rounds_and_config_in_the_run_folder(tmp_path):
    _record_a_run(tmp_path / "run", {"name": "wandb", "group": "sweep-a", "run_name": "job-0"})
    [run_file] = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    history, config, summary, run = [], {}, {}, None
    for record in _wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "run":
            run = record.run
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in record.summary.update})
    assert run.run_group == "sweep-a" and run.display_name == "job-0" and run.project == "fedray"
    assert config.get("num_clients") == 2 or json.loads(run.config.update[0].value_json) is not None
    rounds = [row for row in history if "round" in row]
    assert [(row["round"], row["val_accuracy"], row["sim_time"]) for row in rounds] == [(0, 0.5, 30.0), (1, 0.75, 60.0)]
    assert rounds[1]["site-1/local_val_accuracy"] == 0.75
    curve = [(row["site-1/local_step"], row["site-1/train_loss"]) for row in history if "site-1/train_loss" in row]
    assert curve == [(3, 2.5), (6, 2.25)]
    assert summary["cross_site/site-1/site-2/accuracy"] == 0.25 and summary["status"] == "completed"


def test_flare_receivers_map_to_the_trackers(tmp_path):
    job = tmp_path / "hello-pt"
    shutil.copytree(JOBS / "hello-pt", job)
    path = job / "app_server" / "config" / "config_fed_server.json"
    server = json.loads(path.read_text())
    server["components"].append({"id": "mlflow", "path": "nvflare.app_opt.tracking.mlflow.mlflow_receiver.MLflowReceiver",
                                 "args": {"tracking_uri": f"sqlite:///{tmp_path}/flare.db",
                                          "kw_args": {"experiment_name": "hello-pt", "run_name": "fedavg"}}})
    path.write_text(json.dumps(server))
    warnings: list[str] = []
    overrides = translate(str(job), report=warnings.append)
    assert not [line for line in warnings if "MLflowReceiver" in line]
    assert {"tracking='mlflow'", f"tracking.uri='sqlite:///{tmp_path}/flare.db'", "tracking.experiment='hello-pt'",
            "tracking.run_name='fedavg'"} <= set(overrides)
    cfg = load_config(overrides, code_check=False)
    assert (cfg.tracking.name, cfg.tracking.experiment) == ("mlflow", "hello-pt")

    server["components"][-1] = {"id": "wandb", "path": "nvflare.app_opt.tracking.wandb.wandb_receiver.WandBReceiver",
                                "args": {"mode": "offline", "wandb_args": {"project": "p", "group": "g", "name": "n"}}}
    path.write_text(json.dumps(server))
    overrides = translate(str(job), report=warnings.append)
    assert {"tracking='wandb'", "tracking.mode='offline'", "tracking.experiment='p'", "tracking.group='g'",
            "tracking.run_name='n'"} <= set(overrides)
    assert load_config(overrides, code_check=False).tracking.group == "g"


def test_a_bad_tracking_key_is_one_line():
    with pytest.raises(ConfigError, match=r"^tracking.mode=cloud: must be one of offline, online, disabled$"):
        load_config(["tracking=wandb", "tracking.mode=cloud"], code_check=False)
    with pytest.raises(ConfigError, match=r"^tracking.name=neptune: must be one of none, mlflow, wandb$"):
        load_config(["tracking.name=neptune"], code_check=False)
