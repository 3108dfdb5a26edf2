"""The simulated clock's pure parts (fedray/system/): profiles, the task formula, seeded dropouts, FedScale's
trace formats and their safe reading, a round's schedule worked by hand, and the config's one-line refusals."""

import math
import os
import pickle

import pytest

from fedray.config import ConfigError, compose, site_names
from fedray.system import DROPPED, LATE, OVER_SELECTED, traces
from fedray.system.availability import UnsafePickle, active_until, available, next_online, safe_load, site_traces
from fedray.system.clock import dropped, task_seconds
from fedray.system.profiles import ZERO_COST, SiteProfile, build_profiles
from fedray.system.schedule import Planned, SyncClock, clock_runs, over_selected_count, plan_round, samples_per_task

LOGNORMAL = {"name": "lognormal", "seconds_per_sample": 0.005, "compute_spread": 0.6, "download_bytes_per_s": 2.5e6,
             "upload_bytes_per_s": 1e6, "bandwidth_spread": 0.8, "latency_s": 0.05, "latency_spread": 0.5,
             "dropout": 0.0, "device_capacity": None, "availability": None}


def test_task_seconds_is_download_plus_compute_plus_upload_plus_latency():
    profile = SiteProfile(seconds_per_sample=0.01, download_bytes_per_s=1000.0, upload_bytes_per_s=500.0,
                          latency_s=0.25, dropout=0.0)
    assert task_seconds(profile, 2000, 300) == pytest.approx(2.0 + 3.0 + 4.0 + 0.25)
    assert task_seconds(ZERO_COST, 10**9, 10**6) == 0.0  # uniform: no simulated time passes


def test_lognormal_profiles_are_seeded_per_site_and_spread_around_the_medians():
    sites = site_names(2000)
    profiles = build_profiles(LOGNORMAL, sites, seed=3)
    assert build_profiles(LOGNORMAL, sites[:5], seed=3) == {s: profiles[s] for s in sites[:5]}  # per site, not per run
    assert build_profiles(LOGNORMAL, sites[:5], seed=4) != {s: profiles[s] for s in sites[:5]}
    compute = sorted(p.seconds_per_sample for p in profiles.values())
    assert compute[1000] == pytest.approx(0.005, rel=0.1)  # the median
    spread = math.log(compute[1682] / compute[1000])  # one sigma above the median, at ~84%
    assert spread == pytest.approx(0.6, rel=0.15)
    assert build_profiles({"name": "uniform"}, sites[:3], 0) == dict.fromkeys(sites[:3], ZERO_COST)


def test_dropout_draws_are_fixed_by_seed_round_and_site_at_the_given_rate():
    profile = SiteProfile(0.0, math.inf, math.inf, 0.0, dropout=0.3)
    draws = [dropped(profile, 7, r, s) for r in range(50) for s in site_names(40)]
    assert draws == [dropped(profile, 7, r, s) for r in range(50) for s in site_names(40)]
    assert sum(draws) / len(draws) == pytest.approx(0.3, abs=0.03)
    assert not any(dropped(ZERO_COST, 7, r, "site-1") for r in range(100))


def test_trace_profiles_follow_fedscale_units(tmp_path):
    capacity, _ = traces.write(tmp_path, 5, seed=1)
    raw = pickle.loads(capacity.read_bytes())
    profiles = build_profiles({"name": "trace", "device_capacity": str(capacity), "dropout": 0.0}, site_names(5), 0)
    first = raw[1]  # site-1 is the file's first client
    # FedScale: computation = 3 x batch x steps x ms-per-sample / 1000; communication = kbit / kbit/s, 1 kbit = 128 B
    assert profiles["site-1"].seconds_per_sample == pytest.approx(3 * first["computation"] / 1000)
    assert profiles["site-1"].upload_bytes_per_s == pytest.approx(first["communication"] * 128)
    with pytest.raises(ValueError, match="has 5 clients, fewer than num_clients=6"):
        build_profiles({"name": "trace", "device_capacity": str(capacity), "dropout": 0.0}, site_names(6), 0)


def test_generated_availability_loads_and_is_honoured(tmp_path):
    _, path = traces.write(tmp_path, 4, seed=2)
    site_trace = site_traces(safe_load(path), site_names(4))
    trace = site_trace["site-2"]
    start, end = trace["active"][0], trace["inactive"][0]
    assert available(site_trace, "site-2", start) and available(site_trace, "site-2", (start + end) / 2)
    assert active_until(site_trace, "site-2", start + 1) == pytest.approx(end)
    assert active_until(site_trace, "site-2", start + trace["finish_time"] + 1) == pytest.approx(end + trace["finish_time"])
    offline = next(t for t in range(0, 86400, 600) if not available(site_trace, "site-2", t))
    assert active_until(site_trace, "site-2", offline) == offline
    assert available({}, "site-9", 0.0) and active_until({}, "site-9", 0.0) == math.inf


class _Hostile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))  # loading it would create a file


def test_a_hostile_pickle_is_refused_in_one_line_and_runs_nothing(tmp_path):
    target = tmp_path / "created_by_pickle"
    hostile = tmp_path / "availability.pkl"
    hostile.write_bytes(pickle.dumps({1: {"active": [0.0], "inactive": [1.0], "finish_time": 2.0,
                                          "model": _Hostile(str(target))}}))
    with pytest.raises(UnsafePickle) as caught:
        safe_load(hostile)
    assert "names io.open" in str(caught.value) and "\n" not in str(caught.value)
    assert not target.exists()
    with pytest.raises(ConfigError, match=r"^system.availability=.*availability.pkl: names io.open: only built-in containers"):
        compose(["data=synthetic", f"system.availability={hostile}"])
    assert not os.path.exists(target)


def test_a_hand_computed_round():
    # 5 sites, 1 MB model, 100 samples each; bandwidth 1 MB/s both ways: 2 s of transfer, plus compute.
    speeds = {"site-1": 0.01, "site-2": 0.05, "site-3": 0.02, "site-4": 0.2, "site-5": 0.03}
    profiles = {s: SiteProfile(v, 1e6, 1e6, 0.5, 0.0) for s, v in speeds.items()}
    samples = dict.fromkeys(speeds, 100)
    # durations: site-1 3.5, site-2 7.5, site-3 4.5, site-4 22.5, site-5 5.5
    plan = plan_round(list(speeds), 3, profiles, {}, 0.0, 10**6, samples, deadline=10.0, seed=0, current_round=0)
    assert [p.seconds for p in plan.sites] == pytest.approx([3.5, 7.5, 4.5, 22.5, 5.5])
    assert plan.counted == ["site-1", "site-3", "site-5"]
    assert {s: p.kind for s, p in plan.spared.items()} == {"site-2": OVER_SELECTED, "site-4": LATE}
    assert plan.seconds == pytest.approx(5.5)
    # A deadline that leaves fewer than the target: the server waits to the deadline.
    short = plan_round(list(speeds), 3, profiles, {}, 0.0, 10**6, samples, deadline=5.0, seed=0, current_round=0)
    assert short.counted == ["site-1", "site-3"] and short.seconds == 5.0
    # site-3 goes offline 4 s into the round: dropped, and site-2 counts in its place.
    offline = {"site-3": {"active": [0.0], "inactive": [104.0], "finish_time": 1000.0}}
    plan = plan_round(list(speeds), 3, profiles, offline, 100.0, 10**6, samples, 10.0, 0, 0)
    assert plan.spared["site-3"].kind == DROPPED and plan.spared["site-3"].offline_at == 104.0
    assert plan.counted == ["site-1", "site-2", "site-5"]
    assert plan.seconds == pytest.approx(7.5)
    # A dropout draw is the seeded clock.dropped's, round by round, and the next fastest site counts in its place.
    flaky = {**profiles, "site-1": SiteProfile(0.01, 1e6, 1e6, 0.5, dropout=0.5)}
    outcomes = []
    for r in range(8):
        plan = plan_round(list(speeds), 3, flaky, {}, 0.0, 10**6, samples, 10.0, seed=5, current_round=r)
        lost = dropped(flaky["site-1"], 5, r, "site-1")
        outcomes.append(lost)
        assert plan.counted == (["site-2", "site-3", "site-5"] if lost else ["site-1", "site-3", "site-5"])
        assert (plan.spared.get("site-1") or Planned("", 0)).kind == (DROPPED if lost else None)
    assert True in outcomes and False in outcomes
    assert over_selected_count(10, 1.3, 100) == 13 and over_selected_count(10, 1.3, 11) == 11
    assert over_selected_count(3, 1.0, 100) == 3


@pytest.mark.parametrize("overrides, key", [
    (["workflows.scatter_and_gather.over_selection=0.9"], "workflows.scatter_and_gather.over_selection=0.9: must be >= 1"),
    (["workflows.scatter_and_gather.over_selection=1.3"], "over_selection=1.3: needs sampling=fixed and clients_per_round"),
    (["system=trace"], "system.device_capacity=null: must name"),
    (["system=lognormal", "system.dropout=1"], "system.dropout=1.0: must be in [0, 1)"),
    (["system=lognormal", "workflows.scatter_and_gather.round_deadline=0.01", "min_clients=2"],
     "round_deadline=0.01: only 0 sites can finish"),
    (["system=nope"], "system=nope: no such option in conf/system/"),
    (["clients_per_round=2", "workflows.scatter_and_gather.over_selection=1.5", "privacy=central"],
     "over_selection=1.5: must be 1 / null with privacy=central: the privacy ledger assumes"),
])
def test_bad_system_input_is_one_line_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as caught:
        compose(["data=synthetic", "num_clients=4", *overrides])
    assert key in str(caught.value) and "\n" not in str(caught.value)


def test_traces_that_cannot_serve_the_run_are_one_line(tmp_path):
    capacity, availability = traces.write(tmp_path, 3, seed=0)
    with pytest.raises(ConfigError, match="system.device_capacity: has 3 clients, fewer than num_clients=4"):
        compose(["data=synthetic", "num_clients=4", "system=trace", f"system.device_capacity={capacity}"])
    never = tmp_path / "never.pkl"
    never.write_bytes(pickle.dumps({k: {"active": [], "inactive": [], "finish_time": 10.0} for k in range(1, 5)}))
    with pytest.raises(ConfigError, match="system.availability=.*no site is ever online"):
        compose(["data=synthetic", "num_clients=4", f"system.availability={never}"])
    cfg = compose(["data=synthetic", "num_clients=3", "system=trace", f"system.device_capacity={capacity}",
                   f"system.availability={availability}"])
    assert cfg.system.name == "trace"


def test_only_uniform_always_online_sites_without_policies_skip_the_clock():
    cfg = compose(["data=synthetic"])
    assert not clock_runs(cfg)  # the default: the workflow's code path of before system=, and its bits
    for extra in (["system=lognormal"], ["workflows.scatter_and_gather.round_deadline=5"],
                  ["clients_per_round=4", "workflows.scatter_and_gather.over_selection=1.5"]):
        assert clock_runs(compose(["data=synthetic", *extra])), extra


def test_a_sync_clock_samples_among_the_online_and_counts_every_epoch_batch():
    offline_first = {"site-1": {"active": [10.0], "inactive": [20.0], "finish_time": 100.0}}
    clock = SyncClock(dict.fromkeys(site_names(3), ZERO_COST), offline_first, dict.fromkeys(site_names(3), 0), 0)
    assert clock.online(site_names(3)) == ["site-2", "site-3"]
    clock.now = 115.0  # the trace repeats every 100 s
    assert clock.online(site_names(3)) == site_names(3)
    assert samples_per_task(train_size=100, local_epochs=2, batch_size=32) == 2 * 4 * 32  # a short last batch is a step


def test_with_nobody_online_the_round_waits_for_the_first_site_to_come_online():
    traces_ = {"site-1": {"active": [30.0, 70.0], "inactive": [40.0, 80.0], "finish_time": 100.0},
               "site-2": {"active": [50.0], "inactive": [60.0], "finish_time": 100.0}}
    assert next_online(traces_, "site-1", 45.0) == 70.0 and next_online(traces_, "site-1", 85.0) == 130.0
    assert next_online(traces_, "site-1", 35.0) == 35.0
    clock = SyncClock(dict.fromkeys(site_names(2), ZERO_COST), traces_, dict.fromkeys(site_names(2), 0), 0, now=42.0)
    assert clock.wait_for_online(site_names(2)) == pytest.approx(8.0)  # site-2 at 50
    assert clock.now == 50.0 and clock.online(site_names(2)) == ["site-2"]
    assert clock.wait_for_online(site_names(2)) == 0.0
