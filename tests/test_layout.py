"""The package layout (issue 20): the import contracts bite, the controller's process stays without
torch, old module paths still answer, and a run folder written before the move resumes."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import psutil
import pytest
import torch
from hydra.utils import get_class, get_method

from fedray import run_job
from fedray.records.checkpoint import read_state_file
from tests.fixtures.make_pre_layout_run import OVERRIDES as PRE_LAYOUT_OVERRIDES

REPO = Path(__file__).resolve().parent.parent
PRE_LAYOUT_RUN = REPO / "tests" / "fixtures" / "pre_layout_run"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter with the repository's contracts, on the fedray package found under `root`."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=300, env=env)


def test_the_import_contracts_hold_and_see_an_import_inside_a_function(tmp_path):
    assert _lint_imports(REPO).returncode == 0
    # A torch import put off into a method is still the controller's import: the contract must say so.
    copy = tmp_path / "src"
    shutil.copytree(REPO / "fedray", copy / "fedray", ignore=shutil.ignore_patterns("__pycache__"))
    controller = copy / "fedray" / "server" / "controller.py"
    controller.write_text(controller.read_text() + "\n\ndef _sneaky():\n    import torch  # noqa: F401\n")
    done = _lint_imports(copy)
    assert done.returncode != 0
    assert "fedray.server.controller -> torch" in done.stdout, done.stdout[-2000:]


def _libraries(process: psutil.Process) -> str:
    return Path(f"/proc/{process.pid}/maps").read_text()


@pytest.mark.usefixtures("ray_session")
def test_a_live_controller_process_has_no_torch_while_its_sites_do(job_config, tmp_path):
    """Ray imports the site actor's module in the controller (it holds their handles) and the
    algorithm's module (it builds it): with SCAFFOLD, whose client part works on tensors, the
    controller's process must still not have torch's library mapped; the site workers' must."""
    seen: dict[str, list[bool]] = {"controller": [], "site": []}

    def look(event):
        if event["type"] != "round":
            return
        for process in psutil.process_iter(["cmdline"]):
            title = " ".join(process.info["cmdline"] or ())
            kind = "controller" if title.startswith("ray::Controller") else "site" if title.startswith("ray::SiteWorker") else None
            if kind:
                try:
                    seen[kind].append("libtorch" in _libraries(process))
                except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess):
                    pass

    run_job(job_config("algorithm=scaffold", "rounds=1", "local_epochs=1"), tmp_path, on_event=look)
    assert seen["controller"] == [False]
    assert seen["site"] and all(seen["site"])


def test_old_module_paths_resolve_to_the_moved_modules_with_one_warning_line():
    from fedray.records.sweep import SweepSummary
    from fedray.server.tasks import gather

    with pytest.warns(FutureWarning, match=r"^fedray\.sweep is now fedray\.records\.sweep: ") as caught:
        assert get_class("fedray.sweep.SweepSummary") is SweepSummary  # a _target_, as Hydra resolves it
    assert all("\n" not in str(w.message) for w in caught)
    with pytest.warns(FutureWarning, match="fedray.tasks is now fedray.server.tasks"):
        assert get_method("fedray.tasks.gather") is gather
    with pytest.warns(FutureWarning, match="fedray.workflows.scatter_and_gather is now fedray.server.workflows"):
        import fedray.workflows.scatter_and_gather as old  # a module under an old package

        assert old.sample_sites.__module__ == "fedray.server.workflows.scatter_and_gather"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # names that did not move warn about nothing
        assert get_method("fedray.aggregation.fedavg").__module__ == "fedray.aggregation"
        assert get_class("fedray.algorithms.scaffold.Scaffold").__name__ == "Scaffold"


def test_a_pickle_naming_an_old_module_loads_the_moved_class():
    from fedray.data.partition import Shard

    # Protocol 0's GLOBAL opcode names the class by module and name, as a pickle written before the move does.
    old = b"cfedray.partition\nShard\np0\n."
    with pytest.warns(FutureWarning):
        assert pickle.loads(old) is Shard


def test_python_m_with_an_old_module_path_runs_the_moved_command():
    done = subprocess.run([sys.executable, "-m", "fedray.report", str(PRE_LAYOUT_RUN)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "round" in done.stdout.lower()
    warned = [line for line in done.stderr.splitlines() if "FutureWarning" in line]
    assert warned == ["fedray:0: FutureWarning: fedray.report is now fedray.records.report: update the import or "
                      "_target_ (the old path will be removed)"]


def _digest(run_dir: Path) -> str:
    saved = torch.load(run_dir / "models" / "FL_global_model.pt")["model"]
    digest = hashlib.sha256()
    for name, value in sorted(saved.items()):
        digest.update(name.encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_run_folder_written_before_the_layout_resumes_to_the_same_bits(tmp_path):
    """The fixture's round 0 and SCAFFOLD states were computed and pickled by the flat layout's code;
    today's finishes round 1 from them and must end where a straight run of today's code ends."""
    from fedray import load_config

    stopped = tmp_path / "stopped"
    shutil.copytree(PRE_LAYOUT_RUN, stopped)
    summary = run_job(load_config([f"resume={stopped}"]), tmp_path / "ignored", on_event=lambda e: None)
    assert summary["status"] == "completed" and [r["round"] for r in summary["rounds"]] == [0, 1]
    run_job(load_config(PRE_LAYOUT_OVERRIDES), tmp_path / "straight", on_event=lambda e: None)
    assert _digest(stopped) == _digest(tmp_path / "straight")
    for site in ("site-1", "site-2"):
        resumed = read_state_file(stopped / "checkpoint" / "site_states" / f"{site}.pt")
        straight = read_state_file(tmp_path / "straight" / "checkpoint" / "site_states" / f"{site}.pt")
        assert resumed["round"] == straight["round"] == 1
        assert all((resumed["state"][k] == straight["state"][k]).all() for k in straight["state"])


@pytest.mark.slow
def test_a_users_config_naming_the_old_sweep_callback_still_sweeps(tiny_cifar, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    done = subprocess.run(
        [sys.executable, "-m", "fedray.run", "-m", f"data.root={tiny_cifar}", "data.download=false",
         "data.check_integrity=false", "num_clients=2", "rounds=1", "lr=0.05",
         "hydra.callbacks.sweep_summary._target_=fedray.sweep.SweepSummary", f"hydra.sweep.dir={tmp_path}/sweep"],
        capture_output=True, text=True, timeout=400, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "sweep" / "sweep_summary.csv").is_file()
    assert [line for line in done.stderr.splitlines() if "FutureWarning" in line] == [
        "fedray:0: FutureWarning: fedray.sweep is now fedray.records.sweep: update the import or _target_ "
        "(the old path will be removed)"]


def test_every_target_in_conf_and_the_docs_resolves_without_a_warning():
    import re

    from hydra.utils import get_object

    texts = [path.read_text() for path in [*(REPO / "conf").rglob("*.yaml"), REPO / "README.md", REPO / "docs" / "architecture.md"]]
    targets = {name for text in texts for name in re.findall(r"_target_[:=] *([A-Za-z_][\w.]*)", text)
               if name.startswith(("fedray.", "torch")) and ".my_" not in name}  # my_algo: the README's "your own"
    assert {"fedray.aggregation.fedavg", "fedray.records.sweep.SweepSummary", "fedray.models.Net"} <= targets
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in sorted(targets):
            assert get_object(name) is not None, name
    for module in ("fedray.client", "fedray.client.lightning", "fedray.client.pt", "fedray.client.tracking"):
        assert __import__(module, fromlist=["_"]).__name__ == module
