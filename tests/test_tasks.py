"""The dispatch loop every workflow uses, on real Ray actors that just sleep."""

import time

import pytest
import ray

from fedray.server.tasks import WorkerPool, gather

pytestmark = pytest.mark.usefixtures("ray_session")


@ray.remote(num_cpus=0)
class Sleeper:
    def ready(self) -> bool:
        return True

    def work(self, site: str, seconds: float) -> str:
        if seconds < 0:
            raise ValueError(f"bad input for {site}")
        time.sleep(seconds)
        return site


def _sleepers(count: int) -> list:
    workers = [Sleeper.remote() for _ in range(count)]
    ray.get([w.ready.remote() for w in workers], timeout=120)  # timeouts below count from dispatch, not actor start
    return workers


def _calls(delays: dict[str, float]):
    return [(site, lambda worker, site=site, d=d: worker.work.remote(site, d)) for site, d in delays.items()]


def test_a_pool_runs_one_task_per_worker_at_a_time():
    pool = WorkerPool(_sleepers(2))
    started = time.monotonic()
    outcomes = list(gather(_calls({f"site-{k}": 0.5 for k in range(1, 5)}), pool))
    elapsed = time.monotonic() - started
    assert sorted(o.value for o in outcomes) == ["site-1", "site-2", "site-3", "site-4"]
    assert 0.9 < elapsed < 5  # two waves of two


def test_errors_and_timeouts_are_outcomes_not_exceptions():
    pool = WorkerPool(_sleepers(3))
    outcomes = {o.site: o for o in gather(_calls({"site-1": 0.1, "site-2": -0.1, "site-3": 30}), pool, timeout=1.5)}
    assert outcomes["site-1"].ok and outcomes["site-1"].value == "site-1"
    assert outcomes["site-2"].failure == "error" and "bad input for site-2" in outcomes["site-2"].message
    assert outcomes["site-3"].failure == "timeout"
    # The worker still sleeping is not handed new work until it is done.
    assert len(pool.free()) == 2


def test_min_results_and_wait_after_min_close_the_round_early():
    pool = WorkerPool(_sleepers(3))
    started = time.monotonic()
    outcomes = {o.site: o for o in gather(_calls({"site-1": 0.1, "site-2": 0.1, "site-3": 30}), pool,
                                          min_results=2, wait_after_min=0.5)}
    assert time.monotonic() - started < 5
    assert outcomes["site-3"].failure == "abandoned"


def test_a_site_waits_for_its_own_busy_actor():
    workers = _sleepers(2)
    pool = WorkerPool(workers, home={"site-1": workers[0], "site-2": workers[1]})
    list(gather(_calls({"site-1": 2.0}), pool, timeout=0.5))  # leaves worker 0 busy for ~1.5 s
    outcomes = {o.site: o for o in gather(_calls({"site-1": 0.1, "site-2": 0.1}), pool, timeout=10)}
    assert outcomes["site-1"].ok and outcomes["site-2"].ok
    list(gather(_calls({"site-1": 5.0}), pool, timeout=0.5))
    (late,) = gather(_calls({"site-1": 0.1}), pool, timeout=1.0)
    assert late.failure == "timeout" and "no free worker" in late.message
