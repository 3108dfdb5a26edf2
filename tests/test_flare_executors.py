"""FLARE's Executor API inside sites: a job folder whose clients are its own Executor classes (FLARE 2.4's
hello-pt: Cifar10Trainer for train/submit_model/get_weights, Cifar10Validator for validate) runs as it is."""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedray import ConfigError, run_job
from fedray.flare.job_folder import translate

pytestmark = pytest.mark.usefixtures("ray_session")

JOBS = Path(__file__).resolve().parent / "flare_jobs"


def test_flares_own_hello_pt_runs_its_executors_through_all_three_workflows(job_config, tmp_path):
    warnings: list[str] = []
    overrides = translate(str(JOBS / "hello-pt-2.4"), report=warnings.append)
    assert any(o.startswith("site.flare_app=") for o in overrides) and "rounds=2" in overrides
    assert "flare.model_locator='model_locator'" in overrides and warnings == []  # its PTModelLocator runs
    summary = run_job(job_config(*overrides), tmp_path)

    assert summary["status"] == "completed"
    assert [sorted(r["sites"]) for r in summary["rounds"]] == [["site-1", "site-2"]] * 2
    # Cifar10Trainer reports len(its DataLoader) as NUM_STEPS_CURRENT_ROUND: 64 images at batch 4.
    assert {site["num_steps"] for r in summary["rounds"] for site in r["sites"].values()} == {16}
    final = torch.load(tmp_path / "models" / "FL_global_model.pt")["model"]
    # Cross-site: the sites' models and the one the job's own PTModelLocator finds ("server", FLARE's
    # SRV_server), each cell as Cifar10Validator sent it ({"val_acc": ...}), as ValidationJsonGenerator writes.
    results = json.loads((tmp_path / "cross_site_val" / "cross_val_results.json").read_text())
    assert list(results) == ["site-1", "site-2"]
    for row in results.values():
        assert list(row) == ["site-1", "site-2", "SRV_server"]
        assert all(set(cell) == {"val_acc"} and 0 <= cell["val_acc"] <= 1 for cell in row.values())
    # The locator read the last global model where FLARE's persistor leaves it: the server's app folder
    # of its workspace in the run folder.
    job_id = summary["config"]["job_id"]
    persisted = torch.load(tmp_path / "workspace" / "server" / job_id / "app_server" / "FL_global_model.pt")["model"]
    assert all(torch.equal(persisted[name], final[name]) for name in final)
    # submit_model was the trainer's: the local model it saved in its site's FLARE workspace.
    for site in ("site-1", "site-2"):
        saved = torch.load(tmp_path / "workspace" / site / job_id / "models" / "local_model.pt")
        assert set(saved["model"]) == set(final) and saved["train_conf"] == {"train": {"model": "SimpleNetwork"}}
    assert set(final) == {f"{layer}.{kind}" for layer in ("conv1", "conv2", "fc1", "fc2", "fc3") for kind in ("weight", "bias")}


def _job_copy(tmp_path: Path, trainer_patch: str = "", client_config=None) -> Path:
    """hello-pt-2.4 in tmp_path, with code appended to its trainer module and/or another client config."""
    job = tmp_path / "hello-pt"
    shutil.copytree(JOBS / "hello-pt-2.4", job)
    if trainer_patch:
        trainer = job / "app" / "custom" / "cifar10trainer.py"
        trainer.write_text(trainer.read_text() + "\n" + textwrap.dedent(trainer_patch))
    if client_config is not None:
        path = job / "app" / "config" / "config_fed_client.json"
        path.write_text(json.dumps(client_config(json.loads(path.read_text()))))
    return job


FAILING_SITE_2 = """
    _execute = Cifar10Trainer.execute


    def _failing_on_site_2(self, task_name, shareable, fl_ctx, abort_signal):
        if task_name == "train" and fl_ctx.get_identity_name() == "site-2":
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        return _execute(self, task_name, shareable, fl_ctx, abort_signal)


    Cifar10Trainer.execute = _failing_on_site_2
"""


def test_an_executors_non_ok_return_code_is_a_failed_site(job_config, tmp_path):
    job = _job_copy(tmp_path, FAILING_SITE_2)
    overrides = translate(str(job), report=lambda line: None)
    summary = run_job(job_config(*overrides, "rounds=1", "min_clients=1", "workflows.cross_site_validate.enabled=false",
                                 "workflows.scatter_and_gather.wait_time_after_min_received=120"), tmp_path / "run")
    failure = summary["rounds"][0]["failures"]["site-2"]
    assert failure["kind"] == "error" and "ReturnCode EXECUTION_EXCEPTION" in failure["message"]
    assert "Cifar10Trainer" in failure["message"] and list(summary["rounds"][0]["sites"]) == ["site-1"]


HANGING_SITE_2 = """
    import time as _time

    _execute = Cifar10Trainer.execute


    def _hanging_on_site_2(self, task_name, shareable, fl_ctx, abort_signal):
        if task_name == "train" and fl_ctx.get_identity_name() == "site-2":
            while not abort_signal.triggered:
                _time.sleep(0.05)
            open(MARKER, "w").close()
            return make_reply(ReturnCode.TASK_ABORTED)
        return _execute(self, task_name, shareable, fl_ctx, abort_signal)


    Cifar10Trainer.execute = _hanging_on_site_2
"""


def test_a_task_the_server_gives_up_on_triggers_the_executors_abort_signal(job_config, tmp_path):
    marker = tmp_path / "aborted"
    job = _job_copy(tmp_path, HANGING_SITE_2.replace("MARKER", repr(str(marker))))
    overrides = translate(str(job), report=lambda line: None)
    cfg = job_config(*overrides, "rounds=1", "min_clients=1", "workflows.scatter_and_gather.train_timeout=4",
                     "workflows.cross_site_validate.enabled=false")
    cfg.site.stop_timeout = 30  # time to see the signal and return, before fedray restarts the actor
    summary = run_job(cfg, tmp_path / "run")
    assert summary["rounds"][0]["failures"]["site-2"]["kind"] == "timeout"
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "site-2's executor never saw abort_signal triggered"


def test_an_executor_that_does_not_import_is_one_line_naming_it(job_config, tmp_path):
    def missing_class(config):
        config["executors"][0]["executor"]["path"] = "cifar10trainer.Cifar10Trainr"
        return config

    job = _job_copy(tmp_path, client_config=missing_class)
    overrides = translate(str(job), report=lambda line: None)
    with pytest.raises(ConfigError) as failed:
        run_job(job_config(*overrides), tmp_path / "run")
    message = str(failed.value)
    assert "\n" not in message and "cifar10trainer.Cifar10Trainr" in message and "config_fed_client" in message


@pytest.mark.parametrize("patch, says", [
    ('raise RuntimeError("no GPU driver")', "executor cifar10trainer.Cifar10Trainer: cannot be imported "
                                            "(RuntimeError: no GPU driver)"),
    ('''
     def _fails_to_start(self, event_type, fl_ctx):
         if event_type == "_start_run":
             raise ValueError("no data")


     Cifar10Trainer.handle_event = _fails_to_start
     ''', "cifar10trainer.Cifar10Trainer.handle_event(_start_run) raised ValueError: no data"),
])
def test_an_executor_that_fails_at_import_or_start_run_stops_the_job_in_one_line(job_config, tmp_path, patch, says):
    from fedray import JobFailed

    job = _job_copy(tmp_path, patch)
    with pytest.raises(JobFailed) as failed:
        run_job(job_config(*translate(str(job), report=lambda line: None)), tmp_path / "run")
    assert "\n" not in str(failed.value) and says in str(failed.value)
    assert "app/config/config_fed_client" in str(failed.value)


def _cifar10_sim_job(tmp_path: Path, num_sites: int = 2, name: str = "cifar10_fedavg") -> tuple[Path, list[str]]:
    """FLARE 2.4's cifar10-sim job `name` (its files), its TRAIN_SPLIT_ROOT pointed at tmp_path with each site's
    index file placed there, and the stand-in `pt` package on python_path, as its README's PYTHONPATH does."""
    job = tmp_path / name
    shutil.copytree(JOBS / name, job)
    client = job / name / "config" / "config_fed_client.json"
    config = json.loads(client.read_text())
    config["TRAIN_SPLIT_ROOT"] = str(tmp_path / "splits")
    client.write_text(json.dumps(config))
    (tmp_path / "splits").mkdir()
    for k in range(1, num_sites + 1):
        np.save(tmp_path / "splits" / f"site-{k}.npy", np.arange((k - 1) * 64, k * 64))
    return job, [f"python_path=[{JOBS / 'cifar10_pt'}]", f"num_clients={num_sites}", f"min_clients={num_sites}",
                 "rounds=2"]


def test_a_cifar10_sim_job_runs_its_model_learner_and_its_server_data_splitter(job_config, tmp_path):
    job, given = _cifar10_sim_job(tmp_path)
    shutil.rmtree(tmp_path / "splits")  # the job's data splitter writes them at START_RUN, before any site trains
    server = job / "cifar10_fedavg" / "config" / "config_fed_server.json"
    config = json.loads(server.read_text())
    config["TRAIN_SPLIT_ROOT"] = str(tmp_path / "splits")  # the server's copy of the variable, as the client's
    server.write_text(json.dumps(config))

    warnings: list[str] = []
    overrides = translate(str(job), report=warnings.append)
    assert "model._target_='pt.networks.cifar10_nets.ModerateCNN'" in overrides
    assert "flare.server_components=['data_splitter']" in overrides
    assert any(o.startswith("site.flare_app=") for o in overrides)
    assert any("IntimeModelSelector" in line for line in warnings)
    summary = run_job(job_config(*overrides, *given), tmp_path / "run")

    # START_RUN split the 224 images into min_clients={min_clients}=8 files; sites 1 and 2 trained on theirs.
    split = [np.load(tmp_path / "splits" / f"site-{k}.npy") for k in range(1, 9)]
    assert sorted(np.concatenate(split).tolist()) == list(range(224))
    assert [sorted(r["sites"]) for r in summary["rounds"]] == [["site-1", "site-2"]] * 2
    # The learner's own NUM_STEPS_CURRENT_ROUND: its split at batch 16, AGGREGATION_EPOCHS=4 epochs.
    for k in (1, 2):
        steps = {r["sites"][f"site-{k}"]["num_steps"] for r in summary["rounds"]}
        assert steps == {4 * -(-len(split[k - 1]) // 16)}
    results = json.loads((tmp_path / "run" / "cross_site_val" / "cross_val_results.json").read_text())
    assert list(results["site-1"]) == ["site-1", "site-2", "SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt"]
    assert all(0 <= cell["val_accuracy"] <= 1 for row in results.values() for cell in row.values())


def test_cifar10_sims_scaffold_job_runs_flares_scaffold_learner(job_config, tmp_path):
    """FLARE's cifar10_scaffold job: its Scaffold workflow, CIFAR10ScaffoldModelLearner (FLARE's file) keeping
    its own control variate c_i in the site's one learner for the run, the server's c in fedray's SCAFFOLD."""
    from fedray.records import checkpoint

    job, given = _cifar10_sim_job(tmp_path, name="cifar10_scaffold")
    server = job / "cifar10_scaffold" / "config" / "config_fed_server.json"
    config = json.loads(server.read_text())
    config["components"] = [c for c in config["components"] if c["id"] != "data_splitter"]
    server.write_text(json.dumps(config))  # the splits are placed by hand (the splitter has its own test)
    overrides = translate(str(job), report=lambda line: None)
    assert "algorithm='scaffold'" in overrides and "algorithm.control_weights='steps'" in overrides
    summary = run_job(job_config(*overrides, *given), tmp_path / "run")

    assert summary["status"] == "completed", summary["error"]
    # The learner raises without SCAFFOLD_CTRL_GLOBAL in its task's meta, fedray without SCAFFOLD_CTRL_DIFF
    # in its answer: two rounds of both sites mean the controls went both ways.
    assert [sorted(r["sites"]) for r in summary["rounds"]] == [["site-1", "site-2"]] * 2
    # FLARE's learner trains at its own batch size (64): one step per epoch of 64 images, 4 epochs.
    assert {s["num_steps"] for r in summary["rounds"] for s in r["sites"].values()} == {4}
    # The server's control variate moved off zero, with one entry per model variable.
    saved = checkpoint.load(tmp_path / "run")
    c = saved["algorithm_state"]["c"]
    assert set(c) == set(saved["global"]) and any(np.abs(np.asarray(v)).sum() > 0 for v in c.values())
    results = json.loads((tmp_path / "run" / "cross_site_val" / "cross_val_results.json").read_text())
    # The learner's own validate metrics, as FLARE's ValidationJsonGenerator keeps them.
    assert all(set(cell) == {"train_accuracy", "val_accuracy"} for row in results.values() for cell in row.values())


def test_a_learner_that_stops_its_task_is_a_failed_site(job_config, tmp_path):
    job, given = _cifar10_sim_job(tmp_path)
    server = job / "cifar10_fedavg" / "config" / "config_fed_server.json"
    config = json.loads(server.read_text())
    config["components"] = [c for c in config["components"] if c["id"] != "data_splitter"]
    server.write_text(json.dumps(config))  # no splitter: the splits placed by hand, site-2's missing
    (tmp_path / "splits" / "site-2.npy").unlink()  # site-2's learner: stop_task("No subset index found!")
    overrides = translate(str(job), report=lambda line: None)
    # The round waits for site-2's answer (it fails within seconds), whatever the machine's load.
    summary = run_job(job_config(*overrides, *given, "min_clients=1", "rounds=1",
                                 "workflows.scatter_and_gather.wait_time_after_min_received=120",
                                 "workflows.cross_site_validate.enabled=false"), tmp_path / "run")
    failure = summary["rounds"][0]["failures"]["site-2"]
    # stop_task in the learner's initialize: FLARE's executor re-raises it, and the task fails with its reason.
    assert failure["kind"] == "error" and failure["message"].startswith("TaskExecutionError: No subset index found!")
    assert list(summary["rounds"][0]["sites"]) == ["site-1"]


OLDER_LEARNER = """
    import torch
    from simple_network import SimpleNetwork
    from torch.utils.data import DataLoader
    from torchvision.datasets import FakeData
    from torchvision.transforms import ToTensor

    from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
    from nvflare.apis.fl_constant import ReturnCode
    from nvflare.apis.shareable import make_reply
    from nvflare.app_common.abstract.learner_spec import Learner


    class TinyLearner(Learner):
        '''FLARE 2.0-2.3's learner shape (Shareables in and out), on 64 FakeData images.'''

        def initialize(self, parts, fl_ctx):
            self.model = SimpleNetwork()
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)
            self.loader = DataLoader(FakeData(size=64, image_size=(3, 32, 32), transform=ToTensor()), batch_size=8)

        def _load(self, data):
            dxo = from_shareable(data)
            self.model.load_state_dict({k: torch.as_tensor(v) for k, v in dxo.data.items()})

        def train(self, data, fl_ctx, abort_signal):
            self._load(data)
            for images, labels in self.loader:
                if abort_signal.triggered:
                    return make_reply(ReturnCode.TASK_ABORTED)
                self.optimizer.zero_grad()
                torch.nn.functional.cross_entropy(self.model(images), labels).backward()
                self.optimizer.step()
            weights = {k: v.numpy() for k, v in self.model.state_dict().items()}
            return DXO(DataKind.WEIGHTS, weights, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: len(self.loader)}).to_shareable()

        def get_model_for_validation(self, model_name, fl_ctx):
            weights = {k: v.numpy() for k, v in self.model.state_dict().items()}
            return DXO(DataKind.WEIGHTS, weights).to_shareable()

        def validate(self, data, fl_ctx, abort_signal):
            self._load(data)
            return DXO(DataKind.METRICS, {"val_acc": 0.5}).to_shareable()
"""


def test_flares_older_learner_api_runs_through_learner_executor(job_config, tmp_path):
    def learner_app(config):
        config["executors"] = [{"tasks": ["train", "submit_model", "validate"], "executor": {
            "path": "nvflare.app_common.executors.learner_executor.LearnerExecutor", "args": {"learner_id": "learner"}}}]
        config["components"] = [{"id": "learner", "path": "tiny_learner.TinyLearner", "args": {}}]
        return config

    job = _job_copy(tmp_path, client_config=learner_app)
    (job / "app" / "custom" / "tiny_learner.py").write_text(textwrap.dedent(OLDER_LEARNER))
    overrides = translate(str(job), report=lambda line: None)
    summary = run_job(job_config(*overrides, "rounds=1"), tmp_path / "run")
    assert [sorted(r["sites"]) for r in summary["rounds"]] == [["site-1", "site-2"]]
    assert {s["num_steps"] for s in summary["rounds"][0]["sites"].values()} == {8}
    results = json.loads((tmp_path / "run" / "cross_site_val" / "cross_val_results.json").read_text())
    # Every cross-site cell is the learner's own validate answer (its "val_acc"), for every model.
    assert all(cell == {"val_acc": 0.5} for row in results.values() for cell in row.values())
    assert list(results["site-1"]) == ["site-1", "site-2", "SRV_server"]  # hello-pt's own locator
