"""FLARE's privacy filters (fedray/privacy/flare_filters.py) against FLARE's formulas on small arrays, the
chain's rules, their bad inputs, and FLARE job folders with each filter run end to end.

FLARE 2.5.2's own classes gave the same bits for ExcludeVars and PercentilePrivacy, and the same values
sent by SVTPrivacy (np.random seeded alike), on random models of both data kinds: an ad-hoc comparison
with nvflare installed beside, not a test (nvflare is no dependency).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fedray import ConfigError, run_job
from fedray.flare.job_folder import _override, translate
from fedray.privacy.flare_filters import (
    WEIGHT_DIFF,
    WEIGHTS,
    exclude_vars,
    filter_result,
    percentile_privacy,
    problems,
    sent_weights,
    svt_privacy,
    train_filters,
)

JOBS = Path(__file__).resolve().parent / "flare_jobs"
PERCENTILE = "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy"
SVT = "nvflare.app_common.filters.svt_privacy.SVTPrivacy"
EXCLUDE = "nvflare.app_common.filters.exclude_vars.ExcludeVars"


def test_exclude_vars_removes_the_names_of_a_list_and_what_a_regex_finds():
    data = {"conv1.weight": np.ones(2), "conv1.bias": np.ones(1), "fc.weight": np.ones(3)}
    assert list(exclude_vars(data, ["conv1.bias", "absent"])) == ["conv1.weight", "fc.weight"]
    assert list(exclude_vars(data, "conv")) == ["fc.weight"]  # re.search: anywhere in the name
    assert list(exclude_vars(data, "weight$")) == ["conv1.bias"]
    assert list(exclude_vars(data, None)) == list(data)  # FLARE: nothing to exclude


def test_percentile_privacy_keeps_the_diffs_above_the_percentile_clipped_to_gamma_per_step():
    steps = 4
    # Per step: |values| 0.1 ... 1.2; the 50th percentile of the 12 is 0.65.
    per_step = np.array([0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, 0.9, -1.0, 1.1, -1.2], dtype=np.float32)
    data = {"w": (per_step[:8] * steps).reshape(2, 4), "b": per_step[8:] * steps, "count": np.array(3.0)}
    out = percentile_privacy(data, steps, percentile=50, gamma=0.85)
    cutoff = np.percentile(np.abs(np.concatenate([per_step, [0.75]])), 50)  # the scalar counts in the percentile
    expected = np.where(np.abs(per_step) < cutoff, 0.0, np.clip(per_step, -0.85, 0.85)) * steps
    np.testing.assert_allclose(np.concatenate([out["w"].ravel(), out["b"]]), expected, rtol=1e-6)
    assert (out["w"].ravel()[:4] == 0).all() and out["w"].ravel()[6] == np.float32(0.7) * steps
    assert out["b"][1] == np.float32(-0.85) * steps  # clipped
    assert out["count"] == 3.0  # a scalar: no clipping
    assert out["w"].dtype == np.float32
    assert percentile_privacy(data, steps, percentile=50, gamma=0) == data  # FLARE's skip


def test_svt_privacy_sends_a_fraction_of_the_values_above_a_noisy_threshold_with_noise_clipped_to_gamma():
    rng = np.random.default_rng(0)
    data = {"w": rng.normal(0, 1e-3, (40, 50)).astype(np.float32), "n": np.array(5, dtype=np.int64)}
    steps, gamma = 10, 2e-4
    out = svt_privacy(data, steps, np.random.default_rng(1), fraction=0.1, gamma=gamma)
    sent = np.count_nonzero(out["w"])
    assert 0 < sent <= int(np.ceil(0.1 * 2001))  # n_upload, fewer when drawn twice (with replacement)
    assert np.abs(out["w"] / steps).max() <= gamma * (1 + 1e-12)
    assert out["n"] == 5 and list(out) == ["w", "n"]  # a scalar keeps its value; the result's own order
    again = svt_privacy(data, steps, np.random.default_rng(1), fraction=0.1, gamma=gamma)
    assert all(np.array_equal(out[k], again[k]) for k in out)  # the generator's seed decides every bit
    # Almost no noise (huge epsilon and noise_var) and a threshold tau that exactly 100 values reach:
    # SVT then sends exactly those 100 values, clipped to gamma, and zeros.
    per_step = np.linspace(-1e-3, 1e-3, 400)
    per_step = per_step[np.argsort(np.abs(per_step), kind="stable")]
    tau = (np.abs(per_step[299]) + np.abs(per_step[300])) / 2
    quiet = svt_privacy({"v": per_step * steps}, steps, np.random.default_rng(2), fraction=0.25, epsilon=1e9,
                        noise_var=1e9, gamma=8e-4, tau=tau, replace=False)["v"]
    np.testing.assert_allclose(quiet[:300], 0.0)
    np.testing.assert_allclose(quiet[300:], np.clip(per_step[300:], -8e-4, 8e-4) * steps, rtol=1e-6)


def test_the_chain_runs_in_order_on_its_data_kinds_and_sends_whole_weights():
    global_params = {"a": np.full(4, 10.0, np.float32), "b": np.full(4, 5.0, np.float32)}
    diff = {"a": np.array([1.0, -2.0, 0.1, 0.0], np.float32), "b": np.array([100.0, 0.2, -0.3, 3.0], np.float32)}
    chain = [{"path": EXCLUDE, "args": {"exclude_vars": ["b"]}},
             {"path": PERCENTILE, "args": {"percentile": 50, "gamma": 1.5}}]
    # ExcludeVars first: the percentile of a's values only (0.55), so b's 100 does not raise the cutoff.
    assert list(filter_result(chain, diff, WEIGHT_DIFF, 1, (0,))) == ["a"]
    sent = sent_weights(chain, diff, WEIGHT_DIFF, global_params, 1, (0,))
    np.testing.assert_array_equal(sent["a"], [11.0, 8.5, 10.0, 10.0])
    np.testing.assert_array_equal(sent["b"], global_params["b"])  # left out: keeps its global value
    only_diffs = [{"path": PERCENTILE, "args": {"gamma": 1e-9, "data_kinds": ["WEIGHT_DIFF"]}}]
    weights = {"a": np.array([3.0, 4.0], np.float32)}
    assert sent_weights(only_diffs, weights, WEIGHTS, {"a": np.zeros(2, np.float32)}, 1, (0,))["a"].tolist() == [3, 4]
    chains = [{"tasks": ["validate"], "filters": chain}, {"tasks": ["train"], "direction": "inout", "filters": chain}]
    assert train_filters(chains) == chain and train_filters([{"tasks": ["train"], "direction": "in", "filters": chain}]) == []


@pytest.mark.parametrize("chains, line", [
    ([{"tasks": ["train"], "filters": [{"path": PERCENTILE, "args": {"percentile": 150}}]}],
     "[0].filters[0] PercentilePrivacy percentile=150: must be in [0, 100] (FLARE skips the filter otherwise)"),
    ([{"tasks": ["train"], "filters": [{"path": SVT, "args": {"epsilon": 0}}]}],
     "[0].filters[0] SVTPrivacy epsilon=0: must be positive"),
    ([{"tasks": ["train"], "filters": [{"path": SVT, "args": {"fraction": 1.5}}]}],
     "[0].filters[0] SVTPrivacy fraction=1.5: must be in (0, 1]"),
    ([{"tasks": ["train"], "filters": [{"path": EXCLUDE, "args": {"exclude_vars": 3}}]}],
     "[0].filters[0] ExcludeVars exclude_vars=3: must be a regex or a list of variable names"),
    ([{"tasks": ["train"], "filters": [{"path": PERCENTILE, "args": {"percentil": 10}}]}],
     "[0].filters[0] PercentilePrivacy: no argument 'percentil'"),
    ([{"tasks": ["submit_model"], "filters": [{"path": PERCENTILE}]}],
     "[0] tasks: 'submit_model': fedray filters train results only"),
    ([{"tasks": ["train"], "filters": [{"path": "nvflare.app_opt.he.model_encryptor.HEModelEncryptor"}]}],
     "[0].filters[0] HEModelEncryptor: fedray runs FLARE's ExcludeVars, PercentilePrivacy and SVTPrivacy"),
    ([{"tasks": ["train"], "filters": [{"path": SVT}]}, {"tasks": ["train"], "filters": [{"path": SVT}]}],
     "[1]: a second chain for task 'train' (out); FLARE allows one per task"),
])
def test_bad_filter_arguments_are_one_line_each_before_ray_starts(chains, line, job_config):
    assert problems(chains)[0].startswith(line)
    with pytest.raises(ConfigError) as refused:
        job_config(_override("flare.task_result_filters", chains))  # as flare_job= writes it
    assert str(refused.value).startswith("flare.task_result_filters" + line) and "\n" not in str(refused.value)


def _with_client_filters(tmp_path: Path, job: str, app: str, chain: list) -> Path:
    folder = tmp_path / job
    shutil.copytree(JOBS / job, folder)
    path = next((folder / app / "config").glob("config_fed_client.*"))
    if path.suffix == ".conf":
        from pyhocon import ConfigFactory
        client = ConfigFactory.parse_file(str(path)).as_plain_ordered_dict()
        path.unlink()
        path = path.with_suffix(".json")
    else:
        client = json.loads(path.read_text())
    client["task_result_filters"] = [{"tasks": ["train"], "filters": chain}]
    path.write_text(json.dumps(client))
    return folder


def test_a_client_apps_result_filters_become_flare_task_result_filters(tmp_path):
    chain = [{"path": SVT, "args": {"fraction": 0.2, "epsilon": 0.5, "gamma": 1e-05}}]
    folder = _with_client_filters(tmp_path, "hello-pt", "app_site-1", chain)
    overrides = translate(str(folder), report=lambda line: None)
    assert ("flare.task_result_filters=[{tasks:['train'],filters:[{path:'nvflare.app_common.filters.svt_privacy."
            "SVTPrivacy',args:{fraction:0.2,epsilon:0.5,gamma:1e-05}}]}]") in overrides
    assert not any(o.startswith("flare.params_transfer_type") for o in overrides)  # hello-pt's is FULL
    client_path = folder / "app_site-1" / "config" / "config_fed_client.json"
    client = json.loads(client_path.read_text())
    client["task_data_filters"] = [{"tasks": ["train"], "filters": [{"path": EXCLUDE, "args": {}}]}]
    client["task_result_filters"][0]["filters"].append({"path": "my.filters.Noise", "args": {}})
    client_path.write_text(json.dumps(client))
    with pytest.raises(ConfigError) as refused:
        translate(str(folder), report=lambda line: None)
    assert "app_site-1's config_fed_client task_data_filters: ExcludeVars: filters are not in fedray yet" in str(refused.value)
    assert "task_result_filters[0].filters[1] Noise: fedray runs FLARE's" in str(refused.value)


@pytest.mark.slow
def test_hello_pt_with_exclude_vars_then_percentile_privacy_runs_as_flare_filters_its_full_weights(tmp_path, job_config):
    """hello-pt's client sends FULL weights (params_transfer_type FULL), which FLARE's filters take as they
    are: ExcludeVars leaves fc3 at its global values, PercentilePrivacy zeroes each site's smallest 90% of
    its weights per step and clips the rest to gamma. A site's sent weights are then in {0} U [cutoff, gamma]
    x steps, and the average of two such sites is 0 wherever both zeroed, which is most places."""
    chain = [{"path": EXCLUDE, "args": {"exclude_vars": ["fc3.weight", "fc3.bias"]}},
             {"path": PERCENTILE, "args": {"percentile": 90, "gamma": 0.01}}]
    folder = _with_client_filters(tmp_path, "hello-pt", "app_site-1", chain)
    cfg = job_config(*translate(str(folder), report=lambda line: None), "rounds=1",
                     "workflows.cross_site_validate.enabled=false")
    run_job(cfg, tmp_path / "run")
    model = torch.load(tmp_path / "run" / "models" / "FL_global_model.pt")["model"]
    torch.manual_seed(cfg.seed)  # the global model before the round: the job's seeded init
    import model as hello_pt_model  # on python_path: the job's custom/

    start = hello_pt_model.SimpleNetwork().state_dict()
    for name in ("fc3.weight", "fc3.bias"):
        assert torch.equal(model[name], start[name])
    sent = torch.cat([model[name].ravel() for name in model if not name.startswith("fc3")])
    steps = 4  # 64 images at batch 16, one epoch
    assert sent.abs().max() <= 0.01 * steps + 1e-6
    assert (sent == 0).float().mean() > 0.75  # ~81% where both sites zeroed; unfiltered weights have none


@pytest.mark.slow
def test_the_sag_pt_template_with_svt_privacy_filters_its_scripts_weight_diff(tmp_path, job_config):
    """sag_pt's executor says params_transfer_type DIFF: FLARE's Client API sends the script's weights minus
    the global ones, and SVT sends at most ceil(fraction x size) of those per site, each clipped to gamma
    per step: the global model moves in at most 2 x 10% of its values, by at most gamma x steps."""
    chain = [{"path": SVT, "args": {"fraction": 0.1, "epsilon": 1.0, "noise_var": 1.0, "gamma": 1e-3}}]
    folder = _with_client_filters(tmp_path, "sag_pt", "app", chain)
    (folder / "app" / "custom").mkdir()
    example = Path(__file__).resolve().parent.parent / "examples" / "hello-pt"
    (folder / "app" / "custom" / "train.py").write_text(
        (example / "train.py").read_text().replace("fedray.client", "nvflare.client"))
    shutil.copy(example / "net.py", folder / "app" / "custom" / "net.py")
    overrides = translate(str(folder), report=lambda line: None)
    assert "flare.params_transfer_type='DIFF'" in overrides
    cfg = job_config(*overrides, "rounds=1", "site.script_args='--synthetic 64 --batch_size 16 --lr 0.05'")
    summary = run_job(cfg, tmp_path / "run")
    model = torch.load(tmp_path / "run" / "models" / "FL_global_model.pt")["model"]
    torch.manual_seed(cfg.seed)
    import net

    start = net.Net().state_dict()
    moved = torch.cat([(model[name] - start[name]).ravel() for name in model])
    steps = summary["rounds"][0]["sites"]["site-1"]["num_steps"]
    assert 0 < (moved != 0).sum() <= 2 * np.ceil(0.1 * moved.numel())
    assert moved.abs().max() <= 1e-3 * steps + 1e-6


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_built_in_sites_filter_their_weight_diff_to_the_same_bits_in_any_batch(tmp_path, job_config):
    """fedray's own sites send FLARE's learners' WEIGHT_DIFF through the chain: fc3 left out keeps its
    global values, SVT sends at most 10% of each site's values; SVT's noise is seeded by (seed, round, site),
    so a task per site and batches of sites give the same bits. Cross-site evaluation validates each site's
    own (dense) model, not what it sent."""
    chain = [{"path": EXCLUDE, "args": {"exclude_vars": "^fc3\\."}},
             {"path": SVT, "args": {"fraction": 0.1, "epsilon": 1.0, "noise_var": 1.0, "gamma": 1e-3}}]
    common = ("num_clients=4", "site.num_actors=2", "local_epochs=1", _override("flare.task_result_filters",
              [{"tasks": ["train"], "filters": chain}]))
    run_job(job_config(*common, "site.sites_per_task=1"), tmp_path / "one")
    run_job(job_config(*common, "site.sites_per_task=null", "workflows.cross_site_validate.enabled=false"),
            tmp_path / "batched")
    one, batched = (torch.load(tmp_path / run / "models" / "FL_global_model.pt")["model"] for run in ("one", "batched"))
    assert all(torch.equal(one[name], batched[name]) for name in one)
    torch.manual_seed(0)
    from fedray.models import Net

    start = Net().state_dict()
    assert torch.equal(one["fc3.weight"], start["fc3.weight"]) and torch.equal(one["fc3.bias"], start["fc3.bias"])
    moved = torch.cat([(one[name] - start[name]).ravel() for name in one])
    sent_at_most = 2 * 4 * np.ceil(0.1 * sum(v.numel() for n, v in start.items() if not n.startswith("fc3")))
    assert 0 < (moved != 0).sum() <= sent_at_most
    local = torch.load(tmp_path / "one" / "checkpoint" / "local_models" / "site-1.pt")["model"]
    assert (torch.cat([(local[n] - start[n]).ravel() for n in local]) != 0).float().mean() > 0.9  # trained, dense
    assert (tmp_path / "one" / "cross_site_val" / "cross_val_results.json").is_file()
