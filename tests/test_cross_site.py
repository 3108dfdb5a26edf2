"""CrossSiteModelEval end to end: FLARE's results file, the heatmap, failures, participating_clients."""

import json

import numpy as np
import pytest

from fedray import run_job

pytestmark = pytest.mark.usefixtures("ray_session")

SERVER = ["SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt"]


def _results(run_dir):
    return json.loads((run_dir / "cross_site_val" / "cross_val_results.json").read_text())


def test_three_sites_give_a_three_by_five_matrix_in_flare_format(job_config, tmp_path):
    summary = run_job(job_config(), tmp_path)
    results = _results(tmp_path)
    sites = ["site-1", "site-2", "site-3"]
    assert list(results) == sites
    for row in results.values():
        assert list(row) == sites + SERVER
        for cell in row.values():
            assert set(cell) == {"val_accuracy", "val_loss"}
            assert 0 <= cell["val_accuracy"] <= 1 and np.isfinite(cell["val_loss"])
    assert (tmp_path / "cross_site_val" / "cross_val_results.png").stat().st_size > 10_000
    assert summary["cross_site"] == {"results": results, "failures": []}
    # The global model of the last round is the one scored as SRV_FL_global_model.pt: it learned.
    assert np.mean([row["SRV_FL_global_model.pt"]["val_accuracy"] for row in results.values()]) > 0.3


def test_local_models_win_on_their_own_data_under_label_skew(job_config, tmp_path):
    run_job(job_config("partition=dirichlet", "partition.alpha=0.1", "rounds=1"), tmp_path)
    results = _results(tmp_path)
    sites = list(results)
    for owner in sites:
        own = results[owner][owner]["val_accuracy"]
        others = [results[other][owner]["val_accuracy"] for other in sites if other != owner]
        assert own > np.mean(others), (owner, own, others)


def test_a_failing_site_loses_its_cells_and_nothing_else(job_config, tmp_path):
    job = job_config(
        "rounds=1", "min_clients=2", "site.num_actors=3",
        "model._target_=tests.fault_models.FaultyNet", "+model.fail_eval_sites=[site-3]",
        "workflows.scatter_and_gather.wait_time_after_min_received=60",  # site-3's error, not a late site-3
    )
    summary = run_job(job, tmp_path)
    results = _results(tmp_path)
    assert list(results) == ["site-1", "site-2"]
    for row in results.values():
        assert list(row) == ["site-1", "site-2"] + SERVER
    failed = {(f["site"], f["task"]) for f in summary["cross_site"]["failures"]}
    assert failed == {("site-3", "submit_model"), ("site-3", "validate")}
    assert summary["rounds"][0]["failures"]["site-3"]["kind"] == "error"


def test_participating_clients_limit_rows_and_columns(job_config, tmp_path):
    run_job(job_config("rounds=1", "workflows.cross_site_validate.participating_clients=[site-1,site-3]"), tmp_path)
    results = _results(tmp_path)
    assert list(results) == ["site-1", "site-3"]
    assert all(list(row) == ["site-1", "site-3"] + SERVER for row in results.values())
