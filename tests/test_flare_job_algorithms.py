"""FLARE's algorithm jobs through fedray: SCAFFOLD, FedOpt and FedProx job folders become
fedray's `algorithm` keys, and FLARE's SCAFFOLD script runs with FLARE's own imports.

The folders are written here in the shape of FLARE's examples/advanced/cifar10/cifar10-sim jobs
(cifar10_scaffold, cifar10_fedopt, cifar10_fedprox: the server's JSON as FLARE ships it), with a
Client API executor in place of the examples' learner where the job is run, and tiny data.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from fedray import ConfigError, run_job
from fedray.flare.job_folder import merge_overrides, translate
from fedray.records.checkpoint import read_state_file

pytestmark = pytest.mark.usefixtures("ray_session")

TESTS = Path(__file__).resolve().parent
JOBS = TESTS / "flare_jobs"
SAG = "nvflare.app_common.workflows.scatter_and_gather"
AGGREGATOR = {"id": "aggregator", "path": "nvflare.app_common.aggregators.intime_accumulate_model_aggregator."
                                          "InTimeAccumulateWeightedAggregator", "args": {}}
PERSISTOR = {"id": "persistor", "path": "nvflare.app_opt.pt.file_model_persistor.PTFileModelPersistor",
             "args": {"model": "model"}}  # the id of the model component, as cifar10-sim's jobs have it
MODEL_SELECTOR = {"id": "model_selector", "path": "nvflare.app_common.widgets.intime_model_selector.IntimeModelSelector",
                  "args": {}}


def _sag_args(**more) -> dict:
    return {"min_clients": "{min_clients}", "num_rounds": "{num_rounds}", "start_round": 0,
            "wait_time_after_min_received": 0, "aggregator_id": "aggregator", "persistor_id": "persistor",
            "shareable_generator_id": "shareable_generator", "train_task_name": "train", "train_timeout": 0, **more}


def _write_server(job: Path, workflow: dict, components: list, app: str = "app_server") -> None:
    server = {"format_version": 2, "min_clients": 2, "num_rounds": 2, "task_data_filters": [], "task_result_filters": [],
              "components": components, "workflows": [workflow]}
    (job / app / "config" / "config_fed_server.json").write_text(json.dumps(server, indent=2))


@pytest.fixture
def scaffold_job(tmp_path) -> Path:
    """cifar10_scaffold's shape: ScatterAndGatherScaffold, and a script with FLARE's own imports."""
    job = tmp_path / "cifar10_scaffold"
    shutil.copytree(JOBS / "hello-pt", job)  # meta: app_server on the server, app_site-1 on site-1, site-2
    _write_server(job, {"id": "scatter_gather_ctl", "path": "nvflare.app_common.workflows.scatter_and_gather_scaffold."
                                                            "ScatterAndGatherScaffold", "args": _sag_args()},
                  [{"id": "model", "path": "net.Net", "args": {}}, PERSISTOR,
                   {"id": "shareable_generator", "path": "nvflare.app_common.shareablegenerators."
                                                         "full_model_shareable_generator.FullModelShareableGenerator"},
                   {**AGGREGATOR, "args": {"expected_data_kind": {"_model_weights_": "WEIGHT_DIFF",
                                                                  "scaffold_c_diff": "WEIGHT_DIFF"}}},
                   MODEL_SELECTOR])
    custom = job / "app_site-1" / "custom"
    script = (TESTS / "scripts" / "scaffold_client.py").read_text()
    for fedray_line, flare_lines in [
        ("import fedray.client as flare", "import nvflare.client as flare"),
        ("from fedray.client import AlgorithmConstants, ParamsType, PTFedProxLoss, PTScaffoldHelper",
         "from nvflare.app_common.abstract.fl_model import ParamsType\n"
         "from nvflare.app_common.app_constant import AlgorithmConstants\n"
         "from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss\n"
         "from nvflare.app_opt.pt.scaffold import PTScaffoldHelper, get_lr_values"),
        ("from fedray.models import Net", "from net import Net"),
        ('curr_lr = optimizer.param_groups[0]["lr"]', "curr_lr = get_lr_values(optimizer)[0]"),
        # site-k holds 32k images: the sites' steps differ, so FLARE's weighting of the variates shows.
        ("torch.randn(64, 3, 32, 32", "torch.randn(32 * int(site[-1]), 3, 32, 32"),
        ("torch.randint(0, 10, (64,)", "torch.randint(0, 10, (32 * int(site[-1]),)"),
    ]:
        assert fedray_line in script
        script = script.replace(fedray_line, flare_lines)
    (custom / "client.py").write_text(script)
    shutil.copy(TESTS.parent / "examples" / "hello-pt" / "net.py", custom / "net.py")
    client = json.loads((job / "app_site-1" / "config" / "config_fed_client.json").read_text())
    dump = tmp_path / "dump"
    dump.mkdir()
    client["executors"][0]["executor"]["args"]["task_script_args"] = f"--lr 0.05 --dump {dump}"
    (job / "app_site-1" / "config" / "config_fed_client.json").write_text(json.dumps(client))
    return job


def test_a_flare_scaffold_job_runs_as_fedrays_scaffold_with_flares_weighting(scaffold_job, job_config, tmp_path):
    warnings = []
    overrides = translate(str(scaffold_job), report=warnings.append)
    assert "algorithm='scaffold'" in overrides and "algorithm.control_weights='steps'" in overrides
    assert "model._target_='net.Net'" in overrides  # the persistor's "model": "model", a component id
    assert ["rounds=2", "min_clients=2"] == [o for o in overrides if o.startswith(("rounds=", "min_clients="))][::-1]
    assert len(warnings) == 2  # IntimeModelSelector, ConvertToFedEvent: nothing about the algorithm
    with pytest.raises(ConfigError, match=r"^algorithm.control_weights=flare: must be sites .* or steps"):
        job_config("algorithm=scaffold", "algorithm.control_weights=flare")

    summary = run_job(job_config(*overrides), tmp_path / "run")
    assert all(r["failures"] == {} and sorted(r["sites"]) == ["site-1", "site-2"] for r in summary["rounds"])
    assert [summary["rounds"][0]["sites"][s]["num_steps"] for s in ("site-1", "site-2")] == [2, 4]
    assert "nvflare" not in sys.modules  # served inside the sites only
    c = read_state_file(tmp_path / "run" / "checkpoint" / "algorithm_state.pt")["state"]["c"]
    dump = tmp_path / "dump"
    # FLARE's c: each round, the sites' dc_i averaged by their steps (2 and 4), added up over the rounds.
    for name, value in c.items():
        expected = sum((2 * np.load(dump / f"site-1.round-{r}.npz")[name].astype(np.float64)
                        + 4 * np.load(dump / f"site-2.round-{r}.npz")[name]) / 6 for r in (0, 1))
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7)
    assert np.abs(c["fc3.weight"]).max() > 0


@pytest.fixture
def fedopt_job(tmp_path) -> Path:
    """cifar10_fedopt's server as FLARE ships it (its model SimpleNetwork: hello-pt's custom/)."""
    job = tmp_path / "cifar10_fedopt"
    shutil.copytree(JOBS / "hello-pt", job)
    _write_server(job, {"id": "scatter_gather_ctl", "path": f"{SAG}.ScatterAndGather", "args": _sag_args()},
                  [{"id": "model", "path": "model.SimpleNetwork", "args": {}}, PERSISTOR,
                   {"id": "shareable_generator", "path": "nvflare.app_opt.pt.fedopt.PTFedOptModelShareableGenerator",
                    "args": {"device": "cpu", "source_model": "model",
                             "optimizer_args": {"path": "torch.optim.SGD", "args": {"lr": 1.0, "momentum": 0.6},
                                                "config_type": "dict"},
                             "lr_scheduler_args": {"path": "torch.optim.lr_scheduler.CosineAnnealingLR",
                                                   "args": {"T_max": "{num_rounds}", "eta_min": 0.9},
                                                   "config_type": "dict"}}},
                   AGGREGATOR, MODEL_SELECTOR])
    return job


def test_a_flare_fedopt_job_runs_with_flares_server_optimizer_and_schedule(fedopt_job, job_config, tmp_path):
    overrides = translate(str(fedopt_job), report=lambda line: None)
    for expected in ("algorithm='fedopt'", "~algorithm.server_optimizer",
                     "+algorithm.server_optimizer={_target_:'torch.optim.SGD',lr:1.0,momentum:0.6}",
                     "~algorithm.server_lr_scheduler",
                     "+algorithm.server_lr_scheduler={_target_:'torch.optim.lr_scheduler.CosineAnnealingLR',"
                     "T_max:2,eta_min:0.9}",  # T_max = "{num_rounds}", the config's variable
                     "model._target_='model.SimpleNetwork'"):
        assert expected in overrides
    cfg = job_config(*overrides)
    assert dict(cfg.algorithm.server_optimizer) == {"_target_": "torch.optim.SGD", "lr": 1.0, "momentum": 0.6}
    assert dict(cfg.algorithm.server_lr_scheduler) == {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
                                                       "T_max": 2, "eta_min": 0.9}
    run_job(cfg, tmp_path / "run")
    state = read_state_file(tmp_path / "run" / "checkpoint" / "algorithm_state.pt")["state"]
    assert state["server_lr"] == pytest.approx(0.95)  # round 1's: cosine from 1.0 to 0.9 over T_max=2
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.6
    assert state["optimizer"]["state"]  # momentum buffers: the server optimizer did step

    # The user's algorithm wins over all the algorithm keys the folder means.
    assert merge_overrides(overrides, ["algorithm=fedavg"])[-1] == "algorithm=fedavg"
    assert not [o for o in merge_overrides(overrides, ["algorithm=fedavg"])[:-1] if "algorithm" in o]


def test_flares_fedopt_defaults_and_controller_map_to_whole_fedray_nodes(fedopt_job, job_config):
    path = fedopt_job / "app_server" / "config" / "config_fed_server.json"
    server = json.loads(path.read_text())
    server["components"][2]["args"] = {"source_model": "model"}  # FLARE's defaults: SGD lr 1.0, no schedule
    path.write_text(json.dumps(server))
    overrides = translate(str(fedopt_job), report=lambda line: None)
    assert "+algorithm.server_optimizer={_target_:'torch.optim.SGD',lr:1.0}" in overrides
    assert "algorithm.server_lr_scheduler=null" in overrides
    cfg = job_config(*overrides)
    assert "momentum" not in cfg.algorithm.server_optimizer and cfg.algorithm.server_lr_scheduler is None

    # The fedopt_pt template's FedOpt controller (the Job API's), with a FedAdam-like Adam and no T_max.
    server["workflows"] = [{"id": "fedopt_ctl", "path": "nvflare.app_opt.pt.fedopt_ctl.FedOpt", "args": {
        "num_clients": 2, "num_rounds": 3, "device": "cpu", "source_model": {"path": "model.SimpleNetwork"},
        "optimizer_args": {"path": "torch.optim.Adam", "args": {"lr": 0.01, "betas": [0.9, 0.99]}},
        "persistor_id": "persistor"}}]
    server["components"] = [server["components"][0], server["components"][1]]  # model, persistor
    path.write_text(json.dumps(server))
    overrides = translate(str(fedopt_job), report=lambda line: None)
    assert "+algorithm.server_optimizer={_target_:'torch.optim.Adam',lr:0.01,betas:[0.9,0.99]}" in overrides
    assert ("+algorithm.server_lr_scheduler={_target_:'torch.optim.lr_scheduler.CosineAnnealingLR',"
            "T_max:3,eta_min:0.9}") in overrides  # that class's default
    assert job_config(*overrides).algorithm.server_optimizer.betas == [0.9, 0.99]

    server["workflows"][0]["args"]["source_model"] = {"path": "other.Net"}
    server["workflows"][0]["args"]["optimizer_args"] = {"path": "tf.keras.optimizers.SGD", "args": {"learning_rate": 1}}
    path.write_text(json.dumps(server))
    with pytest.raises(ConfigError) as refused:
        translate(str(fedopt_job), report=lambda line: None)
    assert "FedOpt source_model other.Net is not the persistor's model model.SimpleNetwork" in str(refused.value)
    assert "tf.keras.optimizers.SGD: a TensorFlow class" in str(refused.value)


def test_flares_fedprox_is_fedrays_mu_where_the_job_says_it(tmp_path, job_config):
    job = tmp_path / "fedprox"
    shutil.copytree(JOBS / "hello-pt", job)
    path = job / "app_server" / "config" / "config_fed_server.json"
    server = json.loads(path.read_text())
    server["workflows"] = server["workflows"][:1]  # FedAvg only: no cross-site evaluation, a shorter run
    server["workflows"][0]["args"]["fedprox_mu"] = 0.01  # FLARE's FedProxRecipe: FedAvg sends mu to the script
    path.write_text(json.dumps(server))
    overrides = translate(str(job), report=lambda line: None)
    assert "algorithm='fedprox'" in overrides and "algorithm.mu=0.01" in overrides
    # hello-pt's client made cifar10_fedprox's: mu from the received model's meta, FLARE's FedProx loss.
    script = job / "app_site-1" / "custom" / "client.py"
    text = script.read_text()
    for line, fedprox in [
        ("import nvflare.client as flare\n", "import nvflare.client as flare\nimport copy\n"
         "from nvflare.app_common.utils.fedprox_utils import get_fedprox_mu\n"
         "from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss\n"),
        ("        steps = epochs * len(train_loader)\n", "        steps = epochs * len(train_loader)\n"
         "        prox, global_model = PTFedProxLoss(mu=get_fedprox_mu(input_model)), copy.deepcopy(model)\n"),
        ("cost = loss(predictions, labels)", "cost = loss(predictions, labels) + prox(model, global_model)"),
        ('metrics={"accuracy": accuracy},\n            meta=', 'metrics={"accuracy": accuracy, "mu": prox.mu},\n            meta='),
    ]:
        assert line in text
        text = text.replace(line, fedprox)
    script.write_text(text)
    summary = run_job(job_config(*overrides), tmp_path / "run")
    assert [r["sites"]["site-2"]["mu"] for r in summary["rounds"]] == [0.01, 0.01]

    # cifar10_fedprox's client: a learner with fedproxloss_mu. fedray runs the learner itself (its own FedProx
    # loss over the server's workflow, as in FLARE), so the app becomes site.flare_app and its mu no fedray key.
    client = {"format_version": 2, "executors": [{"tasks": ["train", "submit_model", "validate"], "executor": {
        "id": "Executor", "path": "nvflare.app_common.executors.model_learner_executor.ModelLearnerExecutor",
        "args": {"learner_id": "cifar10-learner"}}}], "task_result_filters": [], "task_data_filters": [],
        "components": [{"id": "cifar10-learner", "path": "pt.learners.CIFAR10ModelLearner",
                        "args": {"train_idx_root": "/tmp/cifar10_splits", "aggregation_epochs": 4, "lr": 1e-2,
                                 "fedproxloss_mu": 1e-5}}]}
    (job / "app_site-1" / "config" / "config_fed_client.json").write_text(json.dumps(client))
    learner_overrides = translate(str(job), report=lambda line: None)
    assert f"site.flare_app='{job / 'app_site-1'}'" in learner_overrides
    assert not any(o.startswith("site.script=") for o in learner_overrides)
    assert "1e-05" not in " ".join(learner_overrides)  # the learner's mu is its own loss's, not fedray's key
