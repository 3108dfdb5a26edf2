"""fedray as users install it: the wheel, in a fresh venv, run from a directory far from any clone.

The venv reuses this environment's dependencies (torch, ray ... through a .pth line, added after
fedray's wheel is installed, so pip never sees them) but not its fedray: in a clone, fedray is
installed editable, and the test checks that the venv's fedray is the wheel's.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from fedray import ConfigError, load_config
from fedray.run import _check_before_start

REPO = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("fedray", "conf", "hydra_plugins", "pyproject.toml", "setup.py", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel` of a copy of the project (the build writes build/ and *.egg-info beside its sources)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in PROJECT_FILES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                             if (REPO / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, timeout=300, env=_clean_env())
    (built,) = out.glob("fedray-*.whl")
    return built


def test_the_wheel_holds_the_configs_and_the_commands(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    configs = sorted(name for name in names if name.startswith("fedray/conf/"))
    assert configs == sorted(f"fedray/conf/{path.relative_to(REPO / 'conf')}" for path in (REPO / "conf").rglob("*.yaml"))
    assert "fedray/conf/config.yaml" in configs and "fedray/flare/job_folder.py" in names
    assert "hydra_plugins/fedray_launcher/ray_launcher.py" in names  # hydra/launcher=fedray_ray, found by Hydra's plugin scan
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "fedray = fedray.run:main" in entry_points and "fedray-report = fedray.records.report:main" in entry_points


@pytest.mark.slow
def test_a_fresh_venv_with_the_wheel_runs_a_job_from_any_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, timeout=300, env=_clean_env())
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import fedray.config as c; print(c.__file__); print(c.CONF_DIR)"],
                           cwd=elsewhere, check=True, capture_output=True, text=True, env=_clean_env())
    module, conf = where.stdout.split()
    assert module.startswith(str(purelib)) and conf == str(purelib / "fedray" / "conf")

    run_dir = elsewhere / "run"
    done = subprocess.run(
        [str(venv / "bin" / "fedray"), "num_clients=2", "rounds=1", "data=synthetic", "data.num_train=400",
         "data.num_test=100", "ray.num_cpus=2", "workflows.cross_site_validate.enabled=false", f"hydra.run.dir={run_dir}"],
        cwd=elsewhere, capture_output=True, text=True, timeout=300, env=_clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["rounds"]) == 1
    report = subprocess.run([str(venv / "bin" / "fedray-report"), str(run_dir)], cwd=elsewhere, capture_output=True,
                            text=True, timeout=120, env=_clean_env())
    assert report.returncode == 0 and "round" in report.stdout.lower()


def test_a_users_own_config_dir_composes_and_is_checked_like_the_built_in_ones(tmp_path):
    mine = tmp_path / "my_conf"
    (mine / "model").mkdir(parents=True)
    (mine / "experiment").mkdir()
    (mine / "model" / "wide.yaml").write_text("_target_: fedray.models.Net\n")
    (mine / "experiment" / "small.yaml").write_text("# @package _global_\nnum_clients: 2\nrounds: 3\nlr: 0.05\n")
    (mine / "experiment" / "broken.yaml").write_text("# @package _global_\nlr: -1\n")
    cfg = load_config(["model=wide", "+experiment=small"], config_dirs=[str(mine)])
    assert (cfg.num_clients, cfg.rounds, cfg.lr, cfg.model._target_) == (2, 3, 0.05, "fedray.models.Net")
    with pytest.raises(ConfigError, match="lr=-1.0: must be positive"):
        load_config(["+experiment=broken"], config_dirs=[str(mine)])
    # The command line's --config-dir is honoured by the check that runs before Hydra and Ray start.
    _check_before_start(["--config-dir", str(mine), "model=wide", "+experiment=small"])
    _check_before_start([f"-cd={mine}", "model=wide"])
    with pytest.raises(ConfigError, match="lr=-1.0: must be positive"):
        _check_before_start(["-cd", str(mine), "+experiment=broken"])
    with pytest.raises(ConfigError, match="model=nothing: no such option"):
        _check_before_start(["--config-dir", str(mine), "model=nothing"])


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH: a worktree on it would stand in for the installed fedray."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"RAY_USAGE_STATS_ENABLED": "0"}
