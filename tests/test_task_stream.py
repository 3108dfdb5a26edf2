"""FedBuff's stream of tasks across model versions: `gather` with calls added while it runs, and the order in
which the schedule's trainings are released to it (fedray/server/workflows/fedbuff.py's `_Tasks`)."""

import time

import numpy as np
import pytest
import ray

from fedray.server.tasks import WorkerPool, gather
from fedray.server.workflows.fedbuff import _Tasks
from fedray.server.workflows.fedbuff_schedule import fedbuff_schedule


@ray.remote(num_cpus=0)
class Clocked:
    def __init__(self, name: str) -> None:
        self.name = name

    def ready(self) -> bool:
        return True

    def work(self, label: str, seconds: float) -> tuple[str, str, float]:
        began = time.time()
        time.sleep(seconds)
        return label, self.name, began


def _call(label: str, seconds: float):
    return label, lambda worker: worker.work.remote(label, seconds)


@pytest.mark.usefixtures("ray_session")
def test_calls_added_while_gather_runs_all_answer_on_their_sites_workers_and_a_freed_worker_goes_on_at_once():
    workers = [Clocked.remote("w0"), Clocked.remote("w1")]
    ray.get([w.ready.remote() for w in workers], timeout=120)
    # One actor per site (a script's): the labels are unique per task, `site_of` names the site whose actor runs it.
    pool = WorkerPool(workers, {"a": workers[0], "b": workers[1]})
    pending = [_call("a@1", 0.3), _call("a@2", 0.3)]
    added = [[_call("b@3", 0.1), _call("a@4", 0.1)], [_call("b@5", 0.1)]]

    def more():
        released, pending[:] = list(pending), []
        return released

    answers = {}
    for outcome in gather([], pool, more=more, site_of=lambda label: label.split("@")[0], timeout=30):
        label, worker, began = outcome.value
        answers[label] = (worker, began, time.time())
        if label == "a@1":
            time.sleep(1.0)  # the caller's work on an answer (an aggregation): a@2 runs meanwhile
        if added:
            pending.extend(added.pop(0))
    assert sorted(answers) == ["a@1", "a@2", "a@4", "b@3", "b@5"]
    assert {label: worker for label, (worker, _, _) in answers.items()} == {
        "a@1": "w0", "a@2": "w0", "a@4": "w0", "b@3": "w1", "b@5": "w1"}
    # a@2 started while the caller still worked on a@1's answer: its worker took it before the answer was yielded.
    assert answers["a@2"][1] < answers["a@1"][2] + 0.6


def test_trainings_go_out_by_the_buffer_they_land_in_a_few_tasks_at_a_time():
    durations = dict(zip([f"site-{k}" for k in range(1, 13)], np.random.default_rng(3).lognormal(0, 1, 12)))
    schedule = fedbuff_schedule(list(durations), concurrency=6, buffer_size=2, num_aggregations=8, seed=0,
                                duration=durations.__getitem__)
    tasks = _Tasks(num_rounds=8, sites_per_task=2, weight_factor=lambda training: 1.0, excluded=None, window=3)
    for version in range(3):
        trainings = [t for t in schedule.trainings if t.version == version and t.aggregation is not None]
        tasks.add(trainings, {"w": np.zeros(2, np.float32)}, f"ref-{version}", None)
    first = tasks.release()
    assert len(first) == 3 and tasks.release() == []  # the window: 3 tasks out until one answers
    def lands(members):  # the first buffer a task's sites land in
        return min(t.aggregation for t in members)

    landing = [lands(tasks.trainings[label]) for label, _ in first]
    assert landing == sorted(map(lands, tasks.trainings.values()))[:3]  # the buffers that aggregate first, first
    for members in tasks.trainings.values():  # a task's sites share a start version and a round, not always a buffer
        assert len(members) <= 2 and len({(t.version, t.repeat) for t in members}) == 1
    assert any(len({t.aggregation for t in members}) > 1 for members in tasks.trainings.values())
