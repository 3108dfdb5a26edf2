"""Two logical GPUs on a CPU machine: 16 sites get 16 actors of an eighth each, and Ray places them all."""

import pytest
import ray

from fedray.driver.resources import plan_sites
from tests.conftest import logical_gpus

SITE = {"num_actors": None, "num_gpus": None, "num_cpus": None, "num_threads": None, "script": None}


@pytest.fixture(scope="module")
def two_logical_gpus():
    with logical_gpus(2):
        yield


@ray.remote
class _Placed:
    """Holds its share like a site actor, without a site actor's seconds of torch import."""

    def gpu_ids(self) -> list:
        return ray.get_gpu_ids()


def test_sixteen_sites_on_two_gpus_are_sixteen_actors_of_an_eighth_that_ray_places(two_logical_gpus):
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    plan = plan_sites(SITE, 16, ray.cluster_resources(), nodes)
    assert (plan.num_actors, plan.num_gpus) == (16, 0.125)
    actors = [_Placed.options(num_gpus=plan.num_gpus, num_cpus=plan.num_cpus).remote() for _ in range(plan.num_actors)]
    try:
        placed = ray.get([actor.gpu_ids.remote() for actor in actors], timeout=120)
        # Each actor is lent one of the two GPUs; eight share each one.
        assert sorted(str(ids[0]) for ids in placed) == ["0"] * 8 + ["1"] * 8
        assert ray.available_resources().get("GPU", 0.0) == 0.0
    finally:
        for actor in actors:
            ray.kill(actor)
