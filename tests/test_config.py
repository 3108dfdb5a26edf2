import os
import subprocess
import sys

import pytest

from fedray import ConfigError, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_compose_and_interpolate():
    cfg = load_config(["num_clients=4", "rounds=3"])
    sag = cfg.workflows.scatter_and_gather
    assert sag.num_rounds == 3 and sag.min_clients is None
    assert cfg.model._target_ == "fedray.models.Net"
    assert cfg.data.name == "cifar10" and cfg.partition.name == "iid"
    assert list(cfg.workflows) == ["pre_train", "scatter_and_gather", "cross_site_validate"]


@pytest.mark.parametrize(
    "overrides, key, fix",
    [
        (["num_clent=3"], "num_clent", "num_clients"),
        (["site.num_gpu=1"], "site.num_gpu", "site.num_gpus"),
        (["num_clients=abc"], "num_clients", "Integer"),
        (["lr=fast"], "lr", "Float"),
        (["num_clients=0"], "num_clients", "at least 1"),
        (["rounds=0"], "rounds", "at least 1"),
        (["num_clients=3", "min_clients=4"], "min_clients", "between 1 and num_clients=3"),
        (["workflows.pre_train.weight_method=last"], "workflows.pre_train.weight_method", "first, client"),
        (["workflows.pre_train.weight_method=client"], "workflows.pre_train.weights_client_name", "must name a site"),
        (
            ["num_clients=2", "workflows.pre_train.weight_method=client", "workflows.pre_train.weights_client_name=site-3"],
            "workflows.pre_train.weights_client_name",
            "site-1 ... site-2",
        ),
        (["data=imagenet"], "data=imagenet", "cifar10, synthetic"),
        (["partition=dirichlet", "partition.alpha=0"], "partition.alpha", "positive"),
        (["data.val_fraction=1.5"], "data.val_fraction", "[0, 1)"),
        (["workflows.scatter_and_gather.exclude_vars='(conv'"], "exclude_vars", "regular expression"),
        (["workflows.scatter_and_gather.exclude_vars=(conv"], "exclude_vars=(conv", "quote a value"),
        (["+workflows.scatter_and_gather.aggregation_weights.site-9=2"], "aggregation_weights.site-9", "names no site"),
        (["model._target_=nowhere.Net"], "model._target_", "cannot be imported"),
        (["site.num_gpus=-1"], "site.num_gpus", ">= 0"),
    ],
)
def test_bad_input_gives_one_line_naming_the_key(overrides, key, fix):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides)
    message = str(caught.value)
    assert "\n" not in message
    assert key in message and fix in message


def test_cli_rejects_a_typo_in_one_line_without_traceback_or_ray(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": REPO}
    done = subprocess.run(
        [sys.executable, "-m", "fedray.run", "num_clent=3", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == ["fedray: num_clent: unknown config key; did you mean 'num_clients'?"]
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "run").exists()  # stopped before Hydra made a run dir, let alone Ray


def test_cli_reports_missing_dataset_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}
    done = subprocess.run(
        [sys.executable, "-m", "fedray.run", f"data.root={tmp_path}/nothing", "data.download=false",
         f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("fedray:")]
    assert len(errors) == 1 and "data.root=" in errors[0] and "data=synthetic" in errors[0]


def test_cli_checks_every_sweep_combination_before_the_first_job(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": REPO}
    done = subprocess.run(
        [sys.executable, "-m", "fedray.run", "-m", "lr=0.05,-1", "num_clients=2,4", f"hydra.sweep.dir={tmp_path}/sweep"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["fedray: lr=-1.0: must be positive"]
    assert not (tmp_path / "sweep").exists()  # no job ran, not even the good combinations
