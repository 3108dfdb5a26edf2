import os
import re
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
        (["data=imagenet"], "data=imagenet", "cifar10, cifar100"),
        (["partition=dirichlet", "partition.alpha=0"], "partition.alpha", "positive"),
        (["data.val_fraction=1.5"], "data.val_fraction", "[0, 1)"),
        (["workflows.scatter_and_gather.exclude_vars='(conv'"], "exclude_vars", "regular expression"),
        (["workflows.scatter_and_gather.exclude_vars=(conv"], "exclude_vars=(conv", "quote a value"),
        (["+workflows.scatter_and_gather.aggregation_weights.site-9=2"], "aggregation_weights.site-9", "names no site"),
        (["model._target_=nowhere.Net"], "model._target_", "cannot be imported"),
        (["site.num_gpus=-1"], "site.num_gpus", ">= 0"),
        (["model._target_=torchvision.models.resnet18"], "model._target_=torchvision.models.resnet18",
         "+model.num_classes=10"),
        (["model._target_=torch.nn.Linear", "+model.in_features=5", "+model.out_features=10"], "model._target_",
         "fails on a batch of 32x32x3 images"),
        (["model._target_=collections.OrderedDict"], "model._target_", "not a torch.nn.Module"),
        (["data.val_fraction=0"], "workflows.cross_site_validate.enabled",
         "data.val_fraction > 0 or workflows.cross_site_validate.enabled=false"),
        (["site.max_task_retries=-1"], "site.max_task_retries", ">= 0"),
        (["site.stop_timeout=0"], "site.stop_timeout", "positive"),
        (["job_timeout=-5"], "job_timeout", ">= 0"),
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


def test_a_script_that_does_not_compile_is_refused_in_one_line(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import torch\nfor x in range(3)\n    print(x)\n")
    with pytest.raises(ConfigError, match=r"site.script=.*train.py: does not compile \(line 2: "):
        load_config([f"site.script={script}"])


def test_an_infeasible_dirichlet_split_is_one_line_naming_alpha_before_any_round(job_config, tmp_path, ray_session):
    from fedray import run_job

    job = job_config("num_clients=200", "partition=dirichlet", "partition.alpha=0.01")
    with pytest.raises(ConfigError, match="partition.alpha=0.01: no draw in 1000 gave every one of 200 sites") as caught:
        run_job(job, tmp_path)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "models").exists()


def test_a_healthy_run_prints_no_error_lines_from_ray(tiny_cifar, tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_ADDRESS": ""}
    done = subprocess.run(
        [sys.executable, "-m", "fedray.run", f"data.root={tiny_cifar}", "data.download=false", "data.check_integrity=false",
         "num_clients=3", "rounds=1", "site.num_actors=2", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # Ray's C++ log lines read "[date time,ms E pid tid] file.cc:line: ..."; Python's say "ERROR".
    noisy = [line for line in (done.stdout + done.stderr).splitlines() if re.search(r"\d E \d+ \d+\]| ERROR ", line)]
    assert not noisy, noisy


def test_a_bad_model_is_one_line_and_the_ray_started_meanwhile_is_stopped(tmp_path):
    """The model is checked while a private Ray starts (torch's import overlaps it): a model that
    cannot take CIFAR-10 still fails in one line, before any actor, and leaves no Ray behind."""
    import psutil

    def ray_heads() -> set[int]:
        return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "gcs_server"}

    before = ray_heads()
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": REPO}
    done = subprocess.run(
        [sys.executable, "-m", "fedray.run", "model._target_=torchvision.models.resnet18", "data=synthetic",
         f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("fedray:")]
    assert len(errors) == 1 and "+model.num_classes=10" in errors[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "run" / "models").exists()
    left = ray_heads() - before
    for pid in left:  # the process waited for that Ray to be up and stopped it before it exited
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, left
