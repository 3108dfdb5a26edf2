"""Many clients on a fixed pool of actors: memory bounded by actors, not by clients."""

import threading
import time

import psutil
import pytest

from fedray import load_config, run_job
from fedray.server.workflows import sample_sites

pytestmark = pytest.mark.usefixtures("ray_session")


def test_sampling_is_seeded_per_round():
    sites = [f"site-{k}" for k in range(1, 101)]
    first = sample_sites(sites, 10, seed=0, current_round=3)
    assert first == sample_sites(sites, 10, seed=0, current_round=3) and len(set(first)) == 10
    assert first != sample_sites(sites, 10, seed=0, current_round=4)
    assert sample_sites(sites, 100, seed=0, current_round=0) == sites


class _SiteWorkerMemory:
    """Samples the processes this test's Ray runs site actors in (their title is ray::SiteWorker...);
    only this process's descendants: other people's Ray on the same machine is not ours to count."""

    def __init__(self) -> None:
        self.peak_uss = 0
        self.peak_processes = 0
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while self.running:
            uss, count = 0, 0
            for process in psutil.Process().children(recursive=True):
                try:
                    is_site = "ray::SiteWorker" in " ".join(process.cmdline())
                except psutil.Error:
                    continue
                if is_site:
                    try:
                        # USS: pages only this process holds; RSS would count the object store it maps.
                        uss += process.memory_full_info().uss
                    except psutil.Error:
                        continue
                    count += 1
            self.peak_uss, self.peak_processes = max(self.peak_uss, uss), max(self.peak_processes, count)
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold"])
def test_a_thousand_clients_fifty_per_round_on_two_actors(tmp_path, algorithm):
    cfg = load_config(["num_clients=1000", "clients_per_round=50", "rounds=2", "data=synthetic",
                       "data.num_train=5000", "data.num_test=500", "data.val_fraction=0.2", f"algorithm={algorithm}"])
    memory = _SiteWorkerMemory()
    memory.thread.start()
    try:
        summary = run_job(cfg, tmp_path)
    finally:
        memory.running = False
        memory.thread.join(5)
    assert [len(r["sites"]) for r in summary["rounds"]] == [50, 50]
    assert summary["rounds"][0]["sites"].keys() != summary["rounds"][1]["sites"].keys()
    # The session's Ray has 2 CPUs: a pool of 2 actors serves all 1000 sites.
    assert 1 <= memory.peak_processes <= 2
    assert memory.peak_uss < 2 * 1024**3
    results = summary["cross_site"]["results"]
    assert len(results) == 32  # a seeded sample of sites that trained, not a 1000 x 1002 matrix
    trained = set(summary["rounds"][0]["sites"]) | set(summary["rounds"][1]["sites"])
    assert set(results) <= trained
    if algorithm == "scaffold":  # each site that trained has its control variate, kept outside the actors
        kept = {path.stem for path in (tmp_path / "checkpoint" / "site_states").glob("site-*.pt")
                if not path.name.endswith(".prev.pt")}
        assert kept == trained
