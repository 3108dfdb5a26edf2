"""Client API scripts run inside the sites, FLARE-style, on real Ray."""

import json
import os

import numpy as np
import pytest
import torch

from fedray import ConfigError, JobFailed, load_config, run_job
from fedray.models import Net

pytestmark = pytest.mark.usefixtures("ray_session")

HERE = os.path.dirname(os.path.abspath(__file__))
SIMPLE = os.path.join(HERE, "scripts", "simple_client.py")
EXAMPLE = os.path.join(os.path.dirname(HERE), "examples", "hello-pt", "train.py")


def test_the_hello_pt_example_trains_and_answers_cross_site_tasks(job_config, tmp_path):
    job = job_config("num_clients=2", f"site.script={EXAMPLE}",
                     "site.script_args='--synthetic 600 --batch_size 16 --lr 0.05'")
    summary = run_job(job, tmp_path)
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert all(r["failures"] == {} for r in summary["rounds"])
    site = summary["rounds"][-1]["sites"]["site-1"]
    assert site["num_steps"] == 19  # 300 images / 16 per batch
    state = torch.load(tmp_path / "models" / "FL_global_model.pt")["model"]
    assert set(state) == set(Net().state_dict())
    results = json.loads((tmp_path / "cross_site_val" / "cross_val_results.json").read_text())
    assert list(results) == ["site-1", "site-2"]
    assert list(results["site-1"]) == ["site-1", "site-2", "SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt"]
    # The script's own data is its own: its score of round 1's global model beats chance (0.1).
    assert summary["rounds"][-1]["sites"]["site-2"]["accuracy"] > 0.2


def test_a_diff_result_is_added_to_the_global_model(job_config, tmp_path):
    job = job_config("num_clients=2", "rounds=1", f"site.script={SIMPLE}", "site.script_args='--diff 0.5'")
    run_job(job, tmp_path)
    torch.manual_seed(0)
    initial = Net().state_dict()
    final = torch.load(tmp_path / "models" / "FL_global_model.pt")["model"]
    for name, value in initial.items():
        assert torch.allclose(final[name], value + 0.5, atol=1e-6), name


def test_scripts_see_the_job_end_and_run_their_epilogue(job_config, tmp_path):
    done = tmp_path / "done"
    run_job(job_config("num_clients=2", "rounds=1", f"site.script={SIMPLE}", f"site.script_args='--done_file {done}'"),
            tmp_path / "run")
    for site in ("site-1", "site-2"):
        assert (tmp_path / f"done.{site}").read_text() == f"{site} left its loop; is_running=False\n"


@pytest.mark.parametrize("mode, says", [
    ("import_error", "raised ImportError: this script cannot start in site-2"),
    ("task_error", "raised ValueError: the training step blew up in site-2"),
    ("no_send", "returned without sending a result for task 'train'"),
    ("wrong_keys", "sent params that do not match the model"),
])
def test_a_failing_script_is_a_failed_site_named_with_its_script(job_config, tmp_path, mode, says):
    job = job_config("num_clients=2", "rounds=1", "min_clients=1", f"site.script={SIMPLE}",
                     f"site.script_args='--misbehave {mode}'", "workflows.cross_site_validate.enabled=false",
                     "workflows.scatter_and_gather.wait_time_after_min_received=30")  # wait for site-2's answer
    summary = run_job(job, tmp_path)
    (entry,) = summary["rounds"]
    assert list(entry["sites"]) == ["site-1"]
    failure = entry["failures"]["site-2"]
    assert failure["kind"] == "error"
    assert "site-2" in failure["message"] and SIMPLE in failure["message"] and says in failure["message"]


def test_a_failure_below_min_clients_stops_the_run_with_the_reason(job_config, tmp_path):
    job = job_config("num_clients=2", "rounds=1", f"site.script={SIMPLE}",
                     "site.script_args='--misbehave task_error --site site-1'", "min_clients=2")
    with pytest.raises(JobFailed, match="site-1: error: ScriptError: site-1: script .* raised ValueError"):
        run_job(job, tmp_path)


def test_a_missing_script_is_a_config_error(tiny_cifar):
    with pytest.raises(ConfigError, match="site.script=.*no such file"):
        load_config([f"site.script={tiny_cifar}/nothing.py"])
