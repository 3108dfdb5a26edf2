"""Failing, hung and crashed sites, interrupted and resumed runs, bad checkpoints: on real Ray."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch

from fedray import JobFailed, run_job
from fedray.records.checkpoint import ResumeError, load

pytestmark = pytest.mark.usefixtures("ray_session")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULTY = ["site.num_actors=3", "model._target_=tests.fault_models.FaultyNet"]


def test_a_site_raising_is_recorded_and_the_run_goes_on(job_config, tmp_path):
    job = job_config(*FAULTY, "min_clients=2", "+model.fail_sites=[site-3]", "workflows.cross_site_validate.enabled=false",
                     "workflows.scatter_and_gather.wait_time_after_min_received=60")  # site-3's error, not a late site-3
    summary = run_job(job, tmp_path)
    assert len(summary["rounds"]) == 2
    for entry in summary["rounds"]:
        assert set(entry["sites"]) == {"site-1", "site-2"}
        assert entry["failures"]["site-3"]["kind"] == "error"
        assert "injected failure in site-3" in entry["failures"]["site-3"]["message"]


def test_ignore_result_error_false_stops_at_the_first_failure(job_config, tmp_path):
    job = job_config(*FAULTY, "min_clients=1", "+model.fail_sites=[site-3]",
                     "workflows.scatter_and_gather.ignore_result_error=false",
                     "workflows.scatter_and_gather.wait_time_after_min_received=120")  # site-3 answers, late or not
    with pytest.raises(JobFailed, match="round 0: site-3 error and ignore_result_error=false"):
        run_job(job, tmp_path)


def test_ignore_result_error_true_goes_on_below_min_clients(job_config, tmp_path):
    job = job_config(*FAULTY, "rounds=1", "+model.fail_sites=[site-3]",
                     "workflows.scatter_and_gather.ignore_result_error=true", "workflows.cross_site_validate.enabled=false")
    summary = run_job(job, tmp_path)  # min_clients defaults to all three
    assert set(summary["rounds"][0]["sites"]) == {"site-1", "site-2"}


def test_a_hung_site_is_timed_out_and_restarted_in_bounded_time(job_config, tmp_path):
    job = job_config(*FAULTY, "min_clients=2", "+model.slow_sites=[site-3]", "+model.delay=600",
                     "workflows.scatter_and_gather.train_timeout=6",
                     "workflows.scatter_and_gather.wait_time_after_min_received=600")
    started = time.monotonic()
    summary = run_job(job, tmp_path)
    assert time.monotonic() - started < 150
    assert [entry["failures"]["site-3"]["kind"] for entry in summary["rounds"]] == ["timeout", "timeout"]
    assert all(set(entry["sites"]) == {"site-1", "site-2"} for entry in summary["rounds"])


def test_a_crashed_site_actor_is_restarted_and_its_task_runs_again(job_config, tmp_path):
    job = job_config(*FAULTY, "min_clients=2", "+model.crash_sites=[site-2]",
                     f"+model.crash_once_file={tmp_path}/crashed",
                     "workflows.scatter_and_gather.wait_time_after_min_received=60")  # see the death, not just a late site
    summary = run_job(job, tmp_path / "run")
    assert (tmp_path / "crashed.site-2").exists()  # it did die, in round 0's training
    # A dead worker process is the infrastructure's fault: the task ran again on the restarted actor.
    assert all(set(entry["sites"]) == {"site-1", "site-2", "site-3"} and not entry["failures"]
               for entry in summary["rounds"])
    assert "site-2" in summary["cross_site"]["results"]


@pytest.mark.slow
def test_a_run_stopped_midway_and_resumed_ends_with_the_same_weights(job_config, tiny_cifar, tmp_path):
    overrides = [f"data.root={tiny_cifar}", "data.download=false", "data.check_integrity=false", "num_clients=3",
                 "rounds=4", "lr=0.05", "local_epochs=2", "eval_batch_size=500", "seed=3", *FAULTY,
                 "+model.slow_sites=[site-1,site-2,site-3]", "+model.delay=0.15"]
    # Slow sites only leave time to stop the run: the straight run does without (same weights).
    slow = ("+model.slow_sites", "+model.delay")
    straight = run_job(job_config(*(o for o in overrides[3:] if not o.startswith(slow))), tmp_path / "straight")

    run_dir = tmp_path / "stopped"
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_ADDRESS": ""}
    command = [sys.executable, "-m", "fedray.run", *overrides, f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not _rounds_done(run_dir) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    if process.poll() is not None:
        pytest.fail(f"the run ended (exit {process.returncode}) before it could be stopped: "
                    f"{process.communicate(timeout=10)[1][-3000:]}")
    assert _rounds_done(run_dir) in (1, 2, 3), "the run should be stopped mid-way"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    errors = [line for line in err.splitlines() if line.startswith("fedray:")]
    assert len(errors) == 1 and "interrupted" in errors[0] and f"resume={run_dir}" in errors[0]
    kept = _rounds_done(run_dir)
    assert torch.load(run_dir / "models" / "FL_global_model.pt")["round"] == kept - 1
    assert not list(run_dir.rglob("*.tmp"))  # no file torn or half-written by the stop

    resumed = subprocess.run([sys.executable, "-m", "fedray.run", f"resume={run_dir}", f"hydra.run.dir={tmp_path}/log"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2, 3]
    ours = torch.load(run_dir / "models" / "FL_global_model.pt")["model"]
    theirs = torch.load(tmp_path / "straight" / "models" / "FL_global_model.pt")["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert summary["best_round"] == straight["best_round"]


def _rounds_done(run_dir) -> int:
    try:
        return len(json.loads((run_dir / "summary.json").read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return 0


def test_a_checkpoint_of_another_model_is_refused_before_ray(job_config, tmp_path):
    run_job(job_config("rounds=1", "workflows.cross_site_validate.enabled=false"), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    summary["config"]["model"] = {"_target_": "torchvision.models.resnet18"}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ResumeError, match="FL_global_model.pt does not match model._target_=torchvision.models.resnet18"):
        load(tmp_path)
    with pytest.raises(ResumeError, match="no finished round"):
        load(tmp_path / "nothing")


def test_a_site_that_returns_nan_weights_is_refused_and_the_run_goes_on(job_config, tmp_path):
    job = job_config(*FAULTY, "min_clients=2", "+model.nan_sites=[site-2]", "workflows.cross_site_validate.enabled=false",
                     "workflows.scatter_and_gather.wait_time_after_min_received=60")
    summary = run_job(job, tmp_path)
    for entry in summary["rounds"]:
        assert set(entry["sites"]) == {"site-1", "site-3"}
        assert entry["failures"]["site-2"]["kind"] == "non_finite"
    state = torch.load(tmp_path / "models" / "best_FL_global_model.pt")["model"]
    assert all(torch.isfinite(value).all() for value in state.values())


def test_divergence_stops_the_run_in_one_line_that_names_lr(job_config, tmp_path):
    job = job_config("lr=10000", "momentum=0", "workflows.cross_site_validate.enabled=false")
    with pytest.raises(JobFailed, match=r"round 0: training diverged: .*NaN or Inf.*lower lr") as caught:
        run_job(job, tmp_path)
    assert "\n" not in str(caught.value)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "diverged" in summary["error"]
    assert not (tmp_path / "models" / "best_FL_global_model.pt").exists()


def test_a_hung_script_site_neither_hangs_cross_site_nor_the_job(job_config, tmp_path):
    """FLARE's hung-client case: round closes without it, cross-site skips its busy actor, the job ends."""
    script = os.path.join(REPO, "tests", "scripts", "simple_client.py")
    job = job_config(f"site.script={script}", "site.script_args='--misbehave hang --site site-3'", "rounds=1",
                     "min_clients=2", "site.stop_timeout=3", "workflows.scatter_and_gather.train_timeout=20")
    started = time.monotonic()
    summary = run_job(job, tmp_path)
    assert time.monotonic() - started < 20 + 30  # train_timeout plus a few seconds, on a busy 2-core machine
    assert summary["rounds"][0]["failures"]["site-3"]["kind"] == "abandoned"
    failed = {(f["site"], f["task"]): f["kind"] for f in summary["cross_site"]["failures"]}
    # Skipped while its actor is stuck, or, once restarted, a fresh script with no model to submit.
    assert failed.get(("site-3", "submit_model")) in ("unavailable", "error")
    assert {"site-1", "site-2"} <= set(summary["cross_site"]["results"]["site-1"])


def test_an_abandoned_built_in_task_stops_within_a_batch(job_config, tmp_path):
    """Cooperative cancellation: the next round does not wait for the late site's whole epoch."""
    job = job_config(*FAULTY, "rounds=2", "min_clients=2", "+model.slow_sites=[site-3]", "+model.delay=0.5",
                     "workflows.cross_site_validate.enabled=false")  # site-3 alone: 2 epochs x 9 batches x 0.5 s
    summary = run_job(job, tmp_path)
    assert [entry["failures"]["site-3"]["kind"] for entry in summary["rounds"]] == ["abandoned", "abandoned"]
    assert summary["rounds"][1]["train_seconds"] < 6  # not the 9 s that site-3's first task had left


def test_job_timeout_ends_a_run_in_one_line_and_keeps_finished_rounds(job_config, tmp_path):
    job = job_config(*FAULTY, "rounds=50", "+model.slow_sites=[site-1,site-2,site-3]", "+model.delay=0.05",
                     "job_timeout=25", "workflows.cross_site_validate.enabled=false")
    started = time.monotonic()
    with pytest.raises(JobFailed, match="job_timeout=25 s passed"):
        run_job(job, tmp_path)
    assert time.monotonic() - started < 25 + 20
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and 1 <= len(summary["rounds"]) < 50


@pytest.mark.slow
def test_killed_worker_processes_rerun_their_tasks_and_end_with_identical_weights(job_config, tmp_path):
    """SIGKILL of site worker processes at seeded random moments is the infrastructure's fault:
    the tasks run again, and the run ends with the same bits as an undisturbed one."""
    # Slow batches keep the sites busy long enough to be struck mid-task, not only between rounds.
    overrides = ("num_clients=4", "rounds=4", "site.num_actors=2", "site.max_restarts=20", "site.max_task_retries=4",
                 "model._target_=tests.fault_models.SlowNet", "+model.delay=0.04")
    calm = run_job(job_config(*overrides), tmp_path / "calm")

    kills: list[int] = []
    started = threading.Event()
    done = threading.Event()

    def killer() -> None:
        rng = random.Random(12)
        started.wait(timeout=300)
        while not done.is_set() and len(kills) < 4:
            time.sleep(rng.uniform(0.3, 2.0))
            if not done.is_set():
                _kill_a_site_worker(rng, kills)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()

    def on_event(event):
        if event["type"] == "workflow":
            started.set()

    try:
        stormy = run_job(job_config(*overrides), tmp_path / "stormy", on_event=on_event)
    finally:
        done.set()
        thread.join(timeout=10)
    assert len(kills) >= 2, "the killer should have struck several times"
    assert [set(r["sites"]) for r in stormy["rounds"]] == [set(r["sites"]) for r in calm["rounds"]]
    ours = torch.load(tmp_path / "stormy" / "models" / "FL_global_model.pt")["model"]
    theirs = torch.load(tmp_path / "calm" / "models" / "FL_global_model.pt")["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def _kill_a_site_worker(rng: random.Random, kills: list[int]) -> None:
    """SIGKILL one of this test's site worker processes, drawn by `rng` (none: nothing), noting its pid."""
    workers = sorted((p for p in psutil.Process().children(recursive=True) if _is_site_worker(p)), key=lambda p: p.pid)
    if workers:
        victim = rng.choice(workers)
        victim.kill()
        kills.append(victim.pid)


def _is_site_worker(process: psutil.Process) -> bool:
    try:
        return "SiteWorker" in " ".join(process.cmdline())
    except psutil.Error:
        return False


@pytest.mark.slow
def test_no_process_of_a_run_outlives_its_killed_driver(tiny_cifar, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "fedray.run", f"data.root={tiny_cifar}", "data.download=false",
               "data.check_integrity=false", "num_clients=3", "rounds=30", f"hydra.run.dir={run_dir}",
               "model._target_=tests.fault_models.SlowNet", "+model.delay=0.05"]
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_ADDRESS": ""}
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not _rounds_done(run_dir) and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    assert _rounds_done(run_dir) >= 1
    ray_processes = [p for p in psutil.Process(driver.pid).children(recursive=True) if "fedray.driver.reaper" not in " ".join(p.cmdline())]
    assert any("raylet" in p.name() for p in ray_processes) and any(_is_site_worker(p) for p in ray_processes)
    driver.kill()
    driver.wait(timeout=30)
    gone, alive = psutil.wait_procs(ray_processes, timeout=30)
    assert not alive, f"left behind: {[p.name() for p in alive]}"


def test_resume_takes_every_finished_round_from_the_rounds_log(job_config, tmp_path):
    """summary.json is rewritten at most every few seconds; rounds.jsonl has each round as it finished."""
    run_job(job_config("rounds=2", "workflows.cross_site_validate.enabled=false"), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    logged = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert logged == summary["rounds"]
    summary["rounds"] = summary["rounds"][:1]  # as if the run died before summary.json caught up
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert [entry["round"] for entry in load(tmp_path)["summary"]["rounds"]] == [0, 1]
