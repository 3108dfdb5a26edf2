"""system.dropout with mode=fedbuff: a lost task is drawn per (seed, round, site) in the schedule, never trained,
recorded as dropped, and its slot refilled when its answer would have come."""

import numpy as np

from fedray.config import compose
from fedray.server.workflows.fedbuff_schedule import fedbuff_schedule
from fedray.system.clock import dropped
from fedray.system.profiles import build_profiles


def test_a_lost_task_frees_its_slot_when_it_would_have_arrived_worked_by_hand():
    """s1 takes 1 s, s2 2 s, both in flight, buffers of 1. s1's first task (round 0) is lost: at t=1 nothing comes,
    s1 (the only idle site) starts again from version 0 (its second task: round 0 + 1 x 2) and arrives at t=2, just
    after s2 (started first): aggregation 0 is s2's, aggregation 1 s1's second task, staleness 1."""
    schedule = fedbuff_schedule(["s1", "s2"], concurrency=2, buffer_size=1, num_aggregations=2, seed=0,
                                duration={"s1": 1.0, "s2": 2.0}.__getitem__,
                                lost=lambda site, task_round: (site, task_round) == ("s1", 0))
    assert schedule.times == [2.0, 2.0]
    assert [(t.site, t.version, t.start, t.arrival) for t in schedule.trainings if t.lost] == [("s1", 0, 0.0, 1.0)]
    assert [(t.site, t.round(2), t.staleness) for t in schedule.landing_in(1)] == [("s1", 2, 1)]
    assert [t.site for t in schedule.landing_in(0)] == ["s2"] and [t.site for t in schedule.dropped_by(0)] == ["s1"]


def test_lost_tasks_are_the_seeded_draws_and_every_buffer_still_fills():
    sites = [f"site-{k}" for k in range(1, 21)]
    system = compose(["system=lognormal", "system.dropout=0.3", "num_clients=20"]).system
    profiles = build_profiles(system, sites, 0)
    durations = dict(zip(sites, np.random.default_rng(1).lognormal(0, 1, len(sites))))
    keys = dict(concurrency=6, buffer_size=3, num_aggregations=15, seed=0, duration=durations.__getitem__)
    schedule = fedbuff_schedule(sites, **keys, lost=lambda site, task_round: dropped(profiles[site], 0, task_round, site))
    lost = [t for t in schedule.trainings if t.lost]
    assert lost and all(t.dropped and t.aggregation is None for t in lost)
    assert all(dropped(profiles[t.site], 0, t.round(15), t.site) == t.lost for t in schedule.trainings)
    assert all(len(schedule.landing_in(k)) == 3 for k in range(15))
    # Nothing lost: the schedule of before, to the bit.
    assert fedbuff_schedule(sites, **keys, lost=lambda site, task_round: False) == fedbuff_schedule(sites, **keys)


def test_fedbuff_takes_system_dropout():
    cfg = compose(["num_clients=8", "system=lognormal", "system.dropout=0.2", "workflows.scatter_and_gather.mode=fedbuff"])
    assert cfg.system.dropout == 0.2
