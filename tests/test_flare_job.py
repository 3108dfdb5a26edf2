"""FLARE job folders run through fedray unchanged: `python -m fedray.run flare_job=PATH`.

tests/flare_jobs/ holds two jobs in FLARE's own formats: `sag_pt` is FLARE's job template
(job_templates/sag_pt, HOCON) as `nvflare job create -w sag_pt ... app_script=train.py
app_config=...` fills it in, its custom/ filled here with the tutorial script in FLARE's form
(examples/hello-pt/train.py with `import nvflare.client as flare`); `hello-pt` is the JSON that
FLARE's Job API exports for examples/hello-world/hello-pt (FedAvg, cross-site evaluation), with
FLARE's client.py and model.py as they are.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedray import ConfigError, run_job
from fedray.flare.job_folder import merge_overrides, translate
from fedray.run import _with_flare_job

pytestmark = pytest.mark.usefixtures("ray_session")

JOBS = Path(__file__).resolve().parent / "flare_jobs"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello-pt"


@pytest.fixture
def sag_pt(tmp_path) -> Path:
    job = tmp_path / "sag_pt"
    shutil.copytree(JOBS / "sag_pt", job)
    (job / "app" / "custom").mkdir()
    script = (EXAMPLE / "train.py").read_text()
    for fedray_name in ("fedray.client as flare", "fedray.client.tracking"):
        assert fedray_name in script
    script = script.replace("import fedray.client as flare", "import nvflare.client as flare")
    script = script.replace("from fedray.client.tracking", "from nvflare.client.tracking")
    (job / "app" / "custom" / "train.py").write_text(script)
    shutil.copy(EXAMPLE / "net.py", job / "app" / "custom" / "net.py")
    return job


def _plant_a_real_nvflare(folder: Path) -> None:
    """An `nvflare` package on the sites' path, as a real NVFlare installed beside fedray would be."""
    (folder / "nvflare" / "client").mkdir(parents=True)
    (folder / "nvflare" / "__init__.py").write_text("raise RuntimeError('the real nvflare was imported')\n")
    (folder / "nvflare" / "client" / "__init__.py").write_text("")


def test_the_sag_pt_template_means_these_overrides(sag_pt):
    lines = []
    overrides = translate(str(sag_pt), report=lines.append)
    custom = sag_pt / "app" / "custom"
    assert overrides == [
        "num_clients=2",
        f"python_path=['{custom}']",
        "min_clients=2",
        "rounds=2",
        "workflows.scatter_and_gather.start_round=0",
        "workflows.scatter_and_gather.wait_time_after_min_received=0",
        "workflows.scatter_and_gather.train_timeout=0",
        "model._target_='net.Net'",  # args.model.path = "{model_class_path}", the template's variable
        "workflows.pre_train.enabled=false",
        "workflows.cross_site_validate.enabled=false",
        f"site.script='{custom / 'train.py'}'",  # "command": "python3 -u custom/{app_script}  {app_config} "
        "site.script_args='--synthetic 600 --batch_size 16 --lr 0.05'",
    ]
    assert [line.split(": ")[3] for line in lines] == ["IntimeModelSelector key_metric=accuracy",
                                                      "TBAnalyticsReceiver"]


def test_the_sag_pt_job_folder_runs_its_script_with_fedrays_client_api(sag_pt, job_config, tmp_path):
    _plant_a_real_nvflare(sag_pt / "app" / "custom")  # on the sites' sys.path: fedray's alias must win there
    summary = run_job(job_config(*translate(str(sag_pt), report=lambda line: None)), tmp_path / "run")
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert all(r["failures"] == {} and sorted(r["sites"]) == ["site-1", "site-2"] for r in summary["rounds"])
    assert summary["rounds"][-1]["sites"]["site-1"]["num_steps"] == 19  # 300 of the script's images / 16
    state = torch.load(tmp_path / "run" / "models" / "FL_global_model.pt")["model"]
    assert list(state) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias",
                           "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
    assert not (tmp_path / "run" / "cross_site_val").exists()  # the template has no CrossSiteModelEval
    assert "nvflare" not in sys.modules  # served inside the sites only


def test_the_hello_pt_job_folder_runs_flares_client_unchanged(job_config, tmp_path):
    overrides = translate(str(JOBS / "hello-pt"), report=lambda line: None)
    assert "model._target_='model.SimpleNetwork'" in overrides and "rounds=2" in overrides
    assert "workflows.cross_site_validate.enabled=true" in overrides
    summary = run_job(job_config(*overrides), tmp_path)
    assert [sorted(r["sites"]) for r in summary["rounds"]] == [["site-1", "site-2"]] * 2
    # FLARE's client trains --epochs 1 over 64 FakeData images at batch 16, on each site.
    assert {r["sites"]["site-2"]["num_steps"] for r in summary["rounds"]} == {4}
    results = json.loads((tmp_path / "cross_site_val" / "cross_val_results.json").read_text())
    assert list(results) == ["site-1", "site-2"]
    assert list(results["site-2"]) == ["site-1", "site-2", "SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt"]
    # Each cell as the script sent it (FLARE's ValidationJsonGenerator keeps the validator's own names).
    assert all(set(cell) == {"accuracy"} and 0 <= cell["accuracy"] <= 100 for row in results.values() for cell in row.values())


def test_the_command_line_prints_what_it_derived_and_the_users_overrides_win(sag_pt, capsys):
    args = _with_flare_job([f"flare_job={sag_pt}", "rounds=1", "data=synthetic", "-m"])
    assert "rounds=1" in args and "rounds=2" not in args
    assert args[-3:] == ["rounds=1", "data=synthetic", "-m"]
    assert "num_clients=2" in args and "min_clients=2" in args
    assert f"flare_job={sag_pt} means: num_clients=2 " in capsys.readouterr().err
    assert merge_overrides(["+model.width=2", "seed=1"], ["model.width=3"]) == ["seed=1", "model.width=3"]


def _server_config(job: Path) -> tuple[Path, dict]:
    path = job / "app_server" / "config" / "config_fed_server.json"
    return path, json.loads(path.read_text())


def test_components_that_change_the_math_are_refused_each_on_its_line_and_logging_is_a_warning(tmp_path):
    job = tmp_path / "hello-pt"
    shutil.copytree(JOBS / "hello-pt", job)
    path, server = _server_config(job)
    server["workflows"][0]["args"]["stop_cond"] = "accuracy >= 80"
    server["components"].append({"id": "tb", "path": "nvflare.app_opt.tracking.tb.tb_receiver.TBAnalyticsReceiver"})
    server["components"].append({"id": "mine", "path": "my_company.fl.SecretSauce", "args": {}})
    server["task_result_filters"] = [{"tasks": ["train"], "filters": [
        {"path": "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy", "args": {}}]}]
    path.write_text(json.dumps(server))
    warnings = []
    with pytest.raises(ConfigError) as refused:
        translate(str(job), report=warnings.append)
    message = str(refused.value)
    assert "\n" not in message
    assert "FedAvg stop_cond=accuracy >= 80: early stopping is not in fedray yet" in message
    # A component of the job's own that no workflow names acts on events: fedray runs it (the pre-flight
    # check then says its module is missing, below), it is no reason to refuse the folder.
    assert "SecretSauce" not in message
    assert "task_result_filters: PercentilePrivacy: filters are not in fedray yet" in message
    assert any("TBAnalyticsReceiver" in line for line in warnings)

    server["workflows"][0]["args"].pop("stop_cond")
    server.pop("task_result_filters")
    path.write_text(json.dumps(server))
    overrides = translate(str(job), report=lambda line: None)
    assert "flare.server_components=['mine']" in overrides
    from fedray.driver.preflight import check_flare_app

    with pytest.raises(ConfigError, match=r"config_fed_server component 'mine' my_company.fl.SecretSauce: no module "
                                          r"my_company.fl in the app's custom/ or on python_path$"):
        check_flare_app(str(job / "app_server"), "config_fed_server", {"mine"})


def test_a_folder_that_is_no_flare_job_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no meta.json or meta.conf there"):
        translate(str(tmp_path))
    shutil.copytree(JOBS / "hello-pt", tmp_path / "job")
    meta = json.loads((tmp_path / "job" / "meta.json").read_text())
    meta["deploy_map"]["app_site-1"] = ["hospital-a", "hospital-b"]
    (tmp_path / "job" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="deploy_map names sites hospital-a, hospital-b; fedray's sites are site-1, site-2"):
        translate(str(tmp_path / "job"))
    os.remove(tmp_path / "job" / "app_site-1" / "custom" / "client.py")
    meta["deploy_map"]["app_site-1"] = ["site-1"]
    (tmp_path / "job" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="app_site-1: script client.py: not in"):
        translate(str(tmp_path / "job"))


def test_scatter_and_gathers_arguments_and_its_aggregators_map_to_fedrays_keys(tmp_path, job_config):
    job = tmp_path / "hello-pt"
    shutil.copytree(JOBS / "hello-pt", job)
    path, server = _server_config(job)
    server["workflows"] = [
        {"id": "pre_train", "path": "nvflare.app_common.workflows.initialize_global_weights.InitializeGlobalWeights",
         "args": {"task_name": "get_weights", "weight_method": "client", "weights_client_name": ["site-2"]}},
        {"id": "scatter_and_gather", "path": "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather",
         "args": {"min_clients": 1, "num_rounds": 3, "wait_time_after_min_received": 5, "train_timeout": 60,
                  "ignore_result_error": True, "aggregator_id": "aggregator", "persistor_id": "persistor",
                  "shareable_generator_id": "shareable_generator"}},
    ]
    server["components"] += [
        {"id": "aggregator", "path": "nvflare.app_common.aggregators.intime_accumulate_model_aggregator."
                                     "InTimeAccumulateWeightedAggregator",
         "args": {"expected_data_kind": "WEIGHTS", "exclude_vars": ["fc3.weight", "fc3.bias"],
                  "aggregation_weights": {"site-1": 0.5, "site-2": 1.0}}},
        {"id": "shareable_generator", "name": "FullModelShareableGenerator", "args": {}},
    ]
    path.write_text(json.dumps(server))
    overrides = translate(str(job), report=lambda line: None)
    for expected in ("min_clients=1", "rounds=3", "workflows.scatter_and_gather.wait_time_after_min_received=5",
                     "workflows.scatter_and_gather.train_timeout=60",
                     "workflows.scatter_and_gather.ignore_result_error=true",
                     "workflows.scatter_and_gather.exclude_vars='^fc3\\.weight$|^fc3\\.bias$'",
                     "+workflows.scatter_and_gather.aggregation_weights.site-1=0.5",
                     "workflows.pre_train.enabled=true", "workflows.pre_train.weight_method='client'",
                     "workflows.pre_train.weights_client_name='site-2'", "workflows.cross_site_validate.enabled=false"):
        assert expected in overrides
    cfg = job_config(*overrides)  # Hydra's grammar and fedray's checks take them as they are
    sag = cfg.workflows.scatter_and_gather
    assert (cfg.num_clients, sag.min_clients, sag.num_rounds, sag.ignore_result_error) == (2, 1, 3, True)
    assert dict(sag.aggregation_weights) == {"site-1": 0.5, "site-2": 1.0}
    assert sag.exclude_vars == r"^fc3\.weight$|^fc3\.bias$"
    assert cfg.workflows.pre_train.weights_client_name == "site-2"


def test_flares_simulator_options_become_fedray_keys(tmp_path):
    from fedray.flare.simulator_cli import simulator_shape, to_fedray_args

    job = JOBS / "hello-pt"
    assert not simulator_shape(["num_clients=2", "-m", str(tmp_path)])  # a folder, but no FLARE job
    args, gpus = to_fedray_args(["-w", str(tmp_path / "ws"), "-n", "3", "-t", "2", str(job), "rounds=1", "-m"])
    # A FLARE job's sites run its own code, an actor each: -t sets nothing.
    assert args == [f"flare_job={job}", "num_clients=3", f"hydra.run.dir={tmp_path / 'ws' / 'simulate_job'}",
                    "rounds=1", "-m"]
    assert gpus is None
    args, gpus = to_fedray_args([str(job), "-c", "site-1,site-2", "-gpu", "0,1"])
    assert args == [f"flare_job={job}", "num_clients=2"] and gpus == "0,1"
    # fedray's own form with the simulator's options: `fedray flare_job=PATH -n 2`
    assert simulator_shape([f"flare_job={job}", "-n", "2"]) and not simulator_shape([f"flare_job={job}", "rounds=1"])
    assert to_fedray_args([f"flare_job={job}", "-n", "2", "rounds=1"])[0] == [f"flare_job={job}", "num_clients=2", "rounds=1"]
    for bad, says in [(["-c", "alice,bob"], "-c alice,bob: fedray names its sites site-1 ... site-N; give -n 2"),
                      (["-n", "0"], "argument -n/--n_clients: must be at least 1; FLARE's simulator options"), (["-gpu", "first"], "-gpu first: give GPU ids")]:
        with pytest.raises(ConfigError, match=f"^{re.escape(says)}"):
            to_fedray_args([str(job), *bad])


@pytest.mark.slow
def test_flares_simulator_command_line_runs_a_job_folder_into_its_workspace(tiny_cifar, tmp_path):
    """`nvflare simulator -w WS -n 2 -t 2 hello-pt`, with `nvflare simulator` changed to fedray's command."""
    env = {**os.environ, "PYTHONPATH": str(JOBS.parent.parent), "RAY_ADDRESS": ""}
    done = subprocess.run(
        [sys.executable, "-m", "fedray.run", "-w", str(tmp_path / "ws"), "-n", "2", "-t", "2", str(JOBS / "hello-pt"),
         f"data.root={tiny_cifar}", "data.download=false", "data.check_integrity=false", "rounds=1"],
        capture_output=True, text=True, timeout=400, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    job = tmp_path / "ws" / "simulate_job"
    summary = json.loads((job / "summary.json").read_text())
    assert summary["config"]["num_clients"] == 2 and [r["round"] for r in summary["rounds"]] == [0]
    assert (job / "models" / "FL_global_model.pt").is_file()
    assert list(json.loads((job / "cross_site_val" / "cross_val_results.json").read_text())) == ["site-1", "site-2"]
