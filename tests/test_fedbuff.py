"""Asynchronous FedBuff: its schedule on the simulated clock (pure), its staleness weights, its config, and runs."""

import json
import random
import threading
import time

import numpy as np
import pytest

from fedray.config import ConfigError, compose
from fedray.records.checkpoint import read_state_file
from fedray.server.workflows.fedbuff_schedule import fedbuff_schedule, staleness_weight
from tests.test_reliability import _kill_a_site_worker

SITES = [f"site-{k}" for k in range(1, 9)]


def _schedule(durations: dict, **keys):
    return fedbuff_schedule(list(durations), duration=durations.__getitem__, **{"seed": 0, **keys})


def test_a_tiny_schedule_is_the_hand_computed_one():
    """3 sites always in flight (1, 2 and 4 s a task), buffers of 2, 3 aggregations: worked by hand.
    With every site in flight, an arriving site's slot is refilled by itself, from the version current then."""
    schedule = _schedule({"s1": 1.0, "s2": 2.0, "s3": 4.0}, concurrency=3, buffer_size=2, num_aggregations=3)
    assert schedule.times == [2.0, 3.0, 4.0]
    landed = [[(t.site, t.version, t.start, t.arrival) for t in sorted(schedule.landing_in(k), key=lambda t: t.arrival)]
              for k in range(3)]
    # Aggregation 0 at t=2: s1's first task (0->1) and s2's (0->2); s1 restarted from v0 at 1 arrives at 2 after s2.
    assert landed[0] == [("s1", 0, 0.0, 1.0), ("s2", 0, 0.0, 2.0)]
    # Aggregation 1 at t=3: s1's second task (from v0, 1->2: staleness 1) and its third (from v1, 2->3).
    assert landed[1] == [("s1", 0, 1.0, 2.0), ("s1", 1, 2.0, 3.0)]
    # Aggregation 2 at t=4: s3 (from v0: staleness 2) before s2 (from v1, 2->4), both at t=4, by start order.
    assert landed[2] == [("s3", 0, 0.0, 4.0), ("s2", 1, 2.0, 4.0)]
    assert [t.staleness for t in schedule.landing_in(2)] == [2, 1]
    # s1 restarted from v2 at 3, s3 from v2 at 4 (before the buffer filled): past the last aggregation, never trained.
    assert [(t.site, t.version, t.start) for t in schedule.trainings if t.aggregation is None] == [("s1", 2, 3.0),
                                                                                                   ("s3", 2, 4.0)]
    assert {t.version for t in schedule.pending_after(1)} == {0, 1}


def test_the_schedule_is_a_function_of_the_seed_and_durations_alone():
    durations = {site: float(d) for site, d in zip(SITES, np.random.default_rng(5).lognormal(0, 1, len(SITES)))}
    one = _schedule(durations, concurrency=4, buffer_size=2, num_aggregations=30)
    assert one == _schedule(durations, concurrency=4, buffer_size=2, num_aggregations=30)
    assert one != _schedule(durations, concurrency=4, buffer_size=2, num_aggregations=30, seed=1)
    assert len(one.times) == 30 and one.times == sorted(one.times)
    for k in range(30):
        assert len(one.landing_in(k)) == 2
        assert all(0 <= t.version <= k and t.arrival <= one.times[k] for t in one.landing_in(k))
    # Never more than `concurrency` in flight, and a site never twice at once.
    for t in one.trainings:
        flying = [u for u in one.trainings if u.start <= t.start < u.arrival or (u.start == t.start and u.index <= t.index)]
        flying = [u for u in flying if u.arrival > t.start or u.index == t.index]
        assert len({u.site for u in flying}) == len(flying) <= 4
    # A longer run is the same run continued: a resume may ask for more aggregations.
    longer = _schedule(durations, concurrency=4, buffer_size=2, num_aggregations=40)
    assert longer.times[:30] == one.times
    assert all(a.aggregation == b.aggregation for a, b in zip(one.trainings, longer.trainings) if a.aggregation is not None)


def test_zero_durations_run_in_start_order_and_fedasync_is_buffer_one():
    zero = dict.fromkeys(SITES, 0.0)
    schedule = _schedule(zero, concurrency=4, buffer_size=1, num_aggregations=10)
    assert schedule.times == [0.0] * 10
    # FIFO: the k-th task to start is the k-th to arrive; each of the first 4 started from v0.
    assert [schedule.landing_in(k)[0].index for k in range(10)] == list(range(10))
    assert [t.staleness for t in (schedule.landing_in(k)[0] for k in range(10))] == [0, 1, 2, 3, 3, 3, 3, 3, 3, 3]


def test_only_sites_online_are_drawn_and_one_that_goes_offline_mid_task_drops_out():
    """s1 always online; s2 online from t=5; s3 online until t=3. Tasks take 2 s, 2 in flight, buffers of 1.
    t=0: s1 and s3 start (s2 offline). t=2: both arrive (aggregations 0, 1), and with s2 offline each restarts
    itself; s3's task would end at 4 but it goes offline at 3: dropped then, and its slot waits (nobody online
    idle) until s2 comes online at 5. t=4: s1 arrives (aggregation 2) and restarts; t=5: s2 starts; t=6: s1."""
    trace = lambda on, off: {"active": [on], "inactive": [off], "finish_time": 100.0}  # noqa: E731
    traces = {"s1": trace(0, 100), "s2": trace(5, 100), "s3": trace(0, 3)}
    for seed in range(4):
        schedule = fedbuff_schedule(["s1", "s2", "s3"], concurrency=2, buffer_size=1, num_aggregations=4, seed=seed,
                                    duration=lambda site: 2.0, traces=traces)
        assert schedule.times == [2.0, 2.0, 4.0, 6.0]
        assert [(t.site, t.start, t.arrival) for t in schedule.trainings if t.dropped] == [("s3", 2.0, 3.0)]
        assert [t.start for t in schedule.trainings if t.site == "s2"] == [5.0]
        assert [t.site for t in schedule.dropped_by(2)] == ["s3"] and not schedule.dropped_by(1)
        # Without traces the same seed draws as before: availability changes nothing for sites always online.
        always = {site: trace(0, 100) for site in SITES}
        assert (fedbuff_schedule(SITES, concurrency=4, buffer_size=2, num_aggregations=10, seed=seed,
                                 duration=lambda site: float(len(site)), traces=always)
                == fedbuff_schedule(SITES, concurrency=4, buffer_size=2, num_aggregations=10, seed=seed,
                                    duration=lambda site: float(len(site))))


def test_bad_schedule_input_is_refused():
    with pytest.raises(ValueError, match="buffer_size"):
        _schedule(dict.fromkeys(SITES, 0.0), concurrency=2, buffer_size=3, num_aggregations=1)
    with pytest.raises(ValueError, match="duration"):
        _schedule(dict.fromkeys(SITES, float("nan")), concurrency=2, buffer_size=1, num_aggregations=1)


def test_a_buffer_moves_the_model_by_server_lr_times_the_staleness_weighted_mean_update():
    from fedray.server.workflows.fedbuff import _Buffer

    x0, x1 = {"w": np.array([1.0, 2.0], np.float32)}, {"w": np.array([1.5, 1.0], np.float32)}
    a, b = {"w": np.array([2.0, 2.0], np.float32)}, {"w": np.array([1.0, 3.0], np.float32)}
    c = {"w": np.array([0.5, 2.5], np.float32)}
    buffer = _Buffer()
    # a trained 4 steps and c 3 from version 0 (staleness 1, weight 0.5); b 2 steps from version 1 (staleness 0).
    for params, version, start, steps, stale in ((a, 0, x0, 4, 0.5), (b, 1, x1, 2, 1.0), (c, 0, x0, 3, 0.5)):
        buffer.trained.add(params, stale * steps)
        buffer.started_from(version, start, stale * steps)
        buffer.weights.append(float(steps))
    moved = buffer.update(x1, server_lr=0.5)["w"]
    expected = x1["w"] + 0.5 * (0.5 * 4 * (a["w"] - x0["w"]) + 2 * (b["w"] - x1["w"]) + 0.5 * 3 * (c["w"] - x0["w"])) / 9
    assert moved.dtype == np.float32 and np.array_equal(moved, expected.astype(np.float32))


def test_staleness_weights_are_the_formulas():
    for s in range(12):
        assert staleness_weight(s, "constant") == 1.0
        assert staleness_weight(s, "polynomial", a=0.5) == 1 / (1 + s) ** 0.5
        assert staleness_weight(s, "hinge", a=10, b=4) == (1.0 if s <= 4 else 1 / (10 * (s - 4) + 1))
        assert staleness_weight(s, "threshold", a=0.25, b=3) == (1.0 if s <= 3 else 0.25)
    assert staleness_weight(3, "polynomial", a=0) == 1.0
    with pytest.raises(ValueError):
        staleness_weight(-1)


@pytest.mark.parametrize("overrides, line", [
    (["workflows.scatter_and_gather.concurrency=2", "workflows.scatter_and_gather.buffer_size=3"],
     "workflows.scatter_and_gather.buffer_size=3: must be between 1 and concurrency=2"),
    (["workflows.scatter_and_gather.concurrency=9"], "workflows.scatter_and_gather.concurrency=9: must be between 1 and num_clients=8"),
    (["workflows.scatter_and_gather.staleness=polynomial", "workflows.scatter_and_gather.staleness_a=2"],
     "staleness_a=2.0: must be in [0, 1]"),
    (["workflows.scatter_and_gather.server_lr=0"], "server_lr=0.0: must be positive"),
    (["algorithm=scaffold"], "fedbuff does not run SCAFFOLD"),
    (["workflows.scatter_and_gather.staleness=linear"], "staleness=linear: must be one of constant, polynomial, threshold, hinge"),
    (["workflows.scatter_and_gather.over_selection=1.3"], "over_selection=1.3: must be 1 with mode=fedbuff"),
])
def test_bad_fedbuff_input_is_one_line_before_ray(overrides, line):
    with pytest.raises(ConfigError) as err:
        compose(["num_clients=8", "workflows.scatter_and_gather.mode=fedbuff", *overrides])
    assert line in str(err.value) and "\n" not in str(err.value)


# --- runs on real Ray: the bits depend on the schedule alone ---

# SlowNet sleeps in each training batch (same weights as Net): time for a killed worker to be struck mid-task.
FEDBUFF = ("system=lognormal", "model._target_=tests.fault_models.SlowNet", "+model.delay=0.05", "num_clients=5", "rounds=4", "local_epochs=1", "workflows.cross_site_validate.enabled=false",
           "workflows.scatter_and_gather.mode=fedbuff", "workflows.scatter_and_gather.concurrency=3",
           "workflows.scatter_and_gather.buffer_size=2", "workflows.scatter_and_gather.staleness=polynomial",
           "workflows.scatter_and_gather.server_lr=0.9")


def _global(run_dir):
    import torch

    return torch.load(run_dir / "models" / "FL_global_model.pt")["model"]


def _same_bits(one, other) -> bool:
    import torch

    return one.keys() == other.keys() and all(torch.equal(one[k], other[k]) for k in one)


@pytest.fixture(scope="module")
def fedbuff_keys(tmp_path_factory) -> tuple[str, ...]:
    """FEDBUFF with an availability trace (FedScale's format): every site offline in [1.5, 2) s of each 100 s."""
    import pickle

    path = tmp_path_factory.mktemp("traces") / "availability.pkl"
    entry = {"active": [0.0, 2.0], "inactive": [1.5, 100.0], "finish_time": 100.0}
    path.write_bytes(pickle.dumps({client: dict(entry) for client in range(1, 6)}))
    return (*FEDBUFF, f"system.availability={path}")


@pytest.fixture(scope="module")
def reference(job_config, ray_session, fedbuff_keys, tmp_path_factory):
    from fedray import run_job

    run_dir = tmp_path_factory.mktemp("fedbuff") / "reference"
    return run_dir, run_job(job_config(*fedbuff_keys, "site.num_actors=1", "site.sites_per_task=1"), run_dir)


@pytest.mark.slow
def test_a_fedbuff_run_records_each_aggregation_as_a_round(reference):
    run_dir, summary = reference
    assert summary["status"] == "completed" and [r["round"] for r in summary["rounds"]] == [0, 1, 2, 3]
    stale = [site["staleness"] for r in summary["rounds"] for site in r["sites"].values()]
    # Two arrivals a buffer (a site that arrived twice in one buffer shows once, with its later task's metrics).
    assert all(1 <= len(r["sites"]) <= 2 for r in summary["rounds"]) and max(stale) >= 1
    assert summary["rounds"][-1]["global"]["test_loss"] < summary["rounds"][0]["global"]["test_loss"]
    # On the clock: each aggregation when its buffer filled; each arrival's own task time, from its profile.
    times = [r["sim_time"] for r in summary["rounds"]]
    assert times == sorted(times) and times[0] > 0 and summary["sim_seconds"] == times[-1]
    assert all(site["sim_seconds"] <= r["sim_time"] for r in summary["rounds"] for site in r["sites"].values())
    # Sites that went offline at 1.5 s before their task's end: dropped, recorded, never trained.
    dropped = [f for r in summary["rounds"] for f in r["failures"].values() if f["kind"] == "dropped"]
    assert dropped and all("went offline at t=1.5 s" in f["message"] for f in dropped)


@pytest.mark.slow
def test_a_fedbuff_run_gives_the_same_bits_on_two_actors_batched_with_killed_workers_and_after_a_resume(
        reference, job_config, fedbuff_keys, tmp_path):
    from fedray import run_job

    run_dir, summary = reference
    # Two actors, sites in batches of two (one task, one partial sum each), and worker processes SIGKILLed at seeded
    # moments: their tasks run again elsewhere (the infrastructure's fault), and nothing in the schedule moves.
    kills: list[int] = []
    done = threading.Event()

    def killer() -> None:
        rng = random.Random(7)
        while not done.is_set() and len(kills) < 3:
            time.sleep(rng.uniform(0.5, 1.5))
            if not done.is_set():
                _kill_a_site_worker(rng, kills)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        batched = run_job(job_config(*fedbuff_keys, "site.num_actors=2", "site.sites_per_task=2", "site.max_restarts=20",
                                     "site.max_task_retries=6"), tmp_path / "batched")
    finally:
        done.set()
        thread.join(timeout=10)
    assert kills, "the killer should have struck"
    assert _same_bits(_global(tmp_path / "batched"), _global(run_dir))
    assert [r["sites"].keys() for r in batched["rounds"]] == [r["sites"].keys() for r in summary["rounds"]]

    class StopAfterSecondAggregation:
        rounds = 0

        def __call__(self, event):
            if event["type"] == "round":
                self.rounds += 1
                if self.rounds == 2:
                    raise KeyboardInterrupt  # as Ctrl-C after aggregation 1's checkpoint, trainings in flight

    stopped = tmp_path / "stopped"
    with pytest.raises(Exception, match="interrupted"):
        run_job(job_config(*fedbuff_keys, "site.num_actors=2", "site.sites_per_task=1"), stopped,
                on_event=StopAfterSecondAggregation())
    # The checkpoint keeps the models that the trainings still in flight started from, a file each, written once.
    kept = read_state_file(stopped / "checkpoint" / "algorithm_state.pt")["state"]["fedray_kept_models"]
    assert kept and set(kept) <= {"version-0", "version-1"}
    listed = json.loads((stopped / "checkpoint" / "manifest.json").read_text())["files"]
    assert {f"checkpoint/kept_models/{name}.pt" for name in kept} <= listed.keys()
    # Version k exists from aggregation k-1 on and is first kept (written) by aggregation k's checkpoint.
    assert all(listed[f"checkpoint/kept_models/{name}.pt"]["round"] == int(name.split("-")[1]) for name in kept)
    old_format = _as_before_kept_models(stopped, tmp_path / "old-format")
    resumed = run_job(job_config(*fedbuff_keys, "site.num_actors=2", "site.sites_per_task=1", f"resume={stopped}"),
                      tmp_path / "ignored")
    assert [r["round"] for r in resumed["rounds"]] == [0, 1, 2, 3]
    assert _same_bits(_global(stopped), _global(run_dir))
    # A run folder of the format before kept_models (the versions inside the server state) resumes to the same bits.
    run_job(job_config(*fedbuff_keys, "site.num_actors=1", "site.sites_per_task=1", f"resume={old_format}"),
            tmp_path / "ignored-too")
    assert _same_bits(_global(old_format), _global(run_dir))


def _as_before_kept_models(run_dir, copy):
    """A copy of a stopped FedBuff run folder as fedray wrote it before checkpoint/kept_models/: the start versions
    in flight inside the server state (algorithm_state.pt's "fedray_fedbuff"), its manifest entry to match."""
    import hashlib
    import shutil

    from fedray.records.checkpoint import _state_bytes
    from fedray.records.weights_only import load

    shutil.copytree(run_dir, copy)
    path, manifest_path = copy / "checkpoint" / "algorithm_state.pt", copy / "checkpoint" / "manifest.json"
    saved, manifest = read_state_file(path), json.loads(manifest_path.read_text())
    names = saved["state"].pop("fedray_kept_models")
    saved["state"]["fedray_fedbuff"] = {"versions": {
        name.split("-")[1]: {k: v.numpy() for k, v in load(copy / "checkpoint" / "kept_models" / f"{name}.pt")["model"].items()}
        for name in names}}
    data = _state_bytes(saved["round"], saved["state"], "state")
    path.write_bytes(data)
    manifest["files"] = {name: entry for name, entry in manifest["files"].items() if "kept_models" not in name}
    manifest["files"]["checkpoint/algorithm_state.pt"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest_path.write_text(json.dumps(manifest))
    shutil.rmtree(copy / "checkpoint" / "kept_models")
    (copy / "checkpoint" / "manifest.prev.json").unlink(missing_ok=True)
    return copy


@pytest.mark.slow
def test_fedopt_steps_its_server_optimizer_on_each_buffer(job_config, ray_session, tmp_path):
    from fedray import run_job
    from fedray.records.checkpoint import read_state_file

    async_keys = [key for key in FEDBUFF if key.startswith("workflows.") or key.startswith("system=")]
    # (FedProx is its sites' loss term and mu in the message: the same code as in synchronous rounds.)
    summary = run_job(job_config(*async_keys, "num_clients=4", "rounds=2", "local_epochs=1", "algorithm=fedopt"),
                      tmp_path / "fedopt")
    assert summary["status"] == "completed" and len(summary["rounds"]) == 2
    state = read_state_file(tmp_path / "fedopt" / "checkpoint" / "algorithm_state.pt")["state"]
    assert state["optimizer"]["state"] and "fedray_kept_models" in state  # FedOpt's momentum after 2 buffers
