"""The simulated clock in whole jobs on real Ray and the tiny CIFAR-10: a hand-computed schedule (speeds,
availability, deadline, over-selection) is what the records show, the sites left out never train, the clock's
path trains the same bits as uniform's where every site counts, and batching or a resume changes no bit."""

import json
import math
import pickle

import pytest
import torch
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedray import run_job
from fedray.records.report import report
from fedray.server.workflows import sample_sites
from fedray.system.schedule import clock_runs

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

# kbit/s per client (computation 0: the transfers alone make the times); site-3 is never online.
KBPS = {"site-1": 1000.0, "site-2": 4000.0, "site-3": 4000.0, "site-4": 500.0, "site-5": 2000.0}
COMMON = ("num_clients=5", "clients_per_round=2", "rounds=2", "local_epochs=1", "seed=3",
          "workflows.cross_site_validate.enabled=false", "workflows.scatter_and_gather.over_selection=1.5")


def _global(run_dir):
    return torch.load(run_dir / "models" / "FL_global_model.pt")["model"]


def _same_bits(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("traces")
    capacity = {k: {"computation": 0.0, "communication": KBPS[f"site-{k}"]} for k in range(1, 6)}
    online = {k: {"active": [] if k == 3 else [0.0], "inactive": [] if k == 3 else [1e9], "finish_time": 2e9}
              for k in range(1, 6)}
    (folder / "capacity.pkl").write_bytes(pickle.dumps(capacity))
    (folder / "online.pkl").write_bytes(pickle.dumps(online))
    return folder / "capacity.pkl", folder / "online.pkl"


@pytest.fixture(scope="module")
def scheduled(job_config, traces, tmp_path_factory):
    capacity, online = traces
    run_dir = tmp_path_factory.mktemp("scheduled")
    overrides = (*COMMON, "system=trace", f"system.device_capacity={capacity}", f"system.availability={online}",
                 "site.sites_per_task=1")
    # The global model's float bytes, as the controller counts them (its state_dict's arrays).
    model = instantiate(job_config(*overrides).model)
    model_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values() if v.is_floating_point())
    seconds = {site: 2 * model_bytes / (kbps * 128) for site, kbps in KBPS.items()}  # down + up at kbit/s of 128 B
    deadline = (seconds["site-1"] + seconds["site-4"]) / 2  # site-4 is late; the others are in time
    summary = run_job(job_config(*overrides, f"workflows.scatter_and_gather.round_deadline={deadline}"), run_dir)
    return run_dir, summary, seconds, deadline, overrides


def test_the_records_show_the_hand_computed_schedule(scheduled):
    run_dir, summary, seconds, deadline, _ = scheduled
    assert summary["status"] == "completed"
    online = ["site-1", "site-2", "site-4", "site-5"]  # site-3 is never online: never sampled
    clock = 0.0
    lines = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    kinds = {f["kind"] for entry in lines for f in entry["failures"].values()}
    assert kinds == {"late", "over_selected"}  # seed 3's draws exercise both policies
    for entry in lines:
        sampled = sample_sites(online, 3, 3, entry["round"])  # ceil(1.5 x 2) of the 4 online
        in_time = sorted((s for s in sampled if seconds[s] <= deadline), key=lambda s: seconds[s])
        counted, losers = in_time[:2], in_time[2:]
        assert sorted(entry["sites"]) == sorted(counted)
        assert {s: f["kind"] for s, f in entry["failures"].items()} == {
            **{s: "late" for s in sampled if seconds[s] > deadline}, **{s: "over_selected" for s in losers}}
        assert all(f["seconds"] == 0.0 for f in entry["failures"].values())  # they never trained
        assert entry["sim_seconds"] == pytest.approx(max(seconds[s] for s in counted))
        clock += entry["sim_seconds"]
        assert entry["sim_time"] == pytest.approx(clock)
        for site in counted:
            assert entry["sites"][site]["sim_seconds"] == pytest.approx(seconds[site])
    assert summary["sim_seconds"] == pytest.approx(clock)
    assert (run_dir / "plots" / "accuracy_sim_time.png").is_file()
    # TensorBoard's round scalars are stamped with the simulated time: its time axis is the federation's.
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    stamps = [point.wall_time for point in events.Scalars("test_accuracy")]
    assert stamps == pytest.approx([entry["sim_time"] for entry in lines])
    text = report(run_dir)
    assert "system=trace" in text and "sim_hours" in text and f"{clock / 3600:.3f}" in text and "never trained: " in text


class _StopAfterFirstRound:
    def __call__(self, event):
        if event["type"] == "round":
            raise KeyboardInterrupt  # as Ctrl-C after round 1's checkpoint


def test_batched_then_stopped_and_resumed_the_clock_goes_on_to_the_same_bits(scheduled, job_config, tmp_path):
    run_dir, summary, _, deadline, overrides = scheduled
    batched = [o for o in overrides if not o.startswith("site.sites_per_task")] + ["site.sites_per_task=2"]
    config = (*batched, f"workflows.scatter_and_gather.round_deadline={deadline}")
    with pytest.raises(Exception, match="interrupted"):
        run_job(job_config(*config), tmp_path, on_event=_StopAfterFirstRound())
    resumed = run_job(job_config(*config, f"resume={tmp_path}"), tmp_path / "ignored")
    assert [(r["sim_seconds"], r["sim_time"], r["failures"]) for r in resumed["rounds"]] == [
        (r["sim_seconds"], r["sim_time"], r["failures"]) for r in summary["rounds"]]
    assert resumed["sim_seconds"] == summary["sim_seconds"]
    assert _same_bits(_global(run_dir), _global(tmp_path))


def test_uniform_keeps_the_old_path_and_the_clock_path_trains_the_same_bits(job_config, tmp_path):
    uniform = job_config("rounds=1", "workflows.cross_site_validate.enabled=false")
    assert not clock_runs(uniform)  # system=uniform: the workflow's code path of before, no clock built
    run_job(uniform, tmp_path / "uniform")
    # Log-normal devices, no deadline, no over-selection: every sampled site counts, on the clock's path.
    clocked = run_job(job_config("rounds=1", "workflows.cross_site_validate.enabled=false", "system=lognormal"),
                      tmp_path / "clocked")
    assert _same_bits(_global(tmp_path / "uniform"), _global(tmp_path / "clocked"))
    assert clocked["sim_seconds"] > 0 and math.isfinite(clocked["sim_seconds"])
    line = json.loads((tmp_path / "uniform" / "rounds.jsonl").read_text().splitlines()[0])
    assert line["sim_seconds"] == 0.0 and line["sim_time"] == 0.0
