"""fedray on a real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster: a head and worker
raylets of their own), joined by address as a user's cluster is: node loss, two jobs sharing it.

Each job is the CLI in a process of its own (a user's driver), so this test process never joins the
cluster and the session's own Ray is untouched. The head has no CPU: every site actor runs on a worker
node, one per node (one CPU each), and the driver's node, where the controller and the objects a run
cannot lose stay, is the head.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tests.small_fs import FULL_THEN_RESUME, small_fs_or_skip

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# Ray's health checks at 0.5 s x 3: a node that is gone is noticed in ~2 s, not Ray's default ~30 s.
FAST_HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                      "health_check_initial_delay_ms": 0}
NODE = {"num_cpus": 1, "object_store_memory": 100 << 20}
JOB = ["num_clients=4", "rounds=4", "local_epochs=6", "lr=0.05", "eval_batch_size=500"]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 100 << 20, "include_dashboard": False,
        "_system_config": FAST_HEALTH_CHECKS})
    workers = [cluster.add_node(**NODE) for _ in range(2)]
    cluster.wait_for_nodes(timeout=60)
    cluster.worker_nodes_in_use = workers
    yield cluster
    cluster.shutdown()


def _start(cluster, tiny_cifar: str, run_dir: Path, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "fedray.run", f"data.root={tiny_cifar}", "data.download=false",
         "data.check_integrity=false", *JOB, f"ray.address={cluster.address}", f"hydra.run.dir={run_dir}", *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=run_dir.parent)


def _finish(process: subprocess.Popen, timeout: float = 300) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, (out + err)[-3000:]
    return out + err


def _rounds(run_dir: Path) -> list[dict]:
    path = run_dir / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _wait_for_round(run_dir: Path, process: subprocess.Popen, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while len(_rounds(run_dir)) < count:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"round {count} not finished within {timeout} s"
        time.sleep(0.05)


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "models" / "FL_global_model.pt", weights_only=True)["model"]


def _same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


@pytest.fixture(scope="module")
def undisturbed_run(cluster, tiny_cifar, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("undisturbed") / "run"
    _finish(_start(cluster, tiny_cifar, run_dir))
    assert [len(r["sites"]) for r in _rounds(run_dir)] == [4] * 4
    return run_dir


@pytest.fixture(scope="module")
def undisturbed(undisturbed_run) -> dict[str, torch.Tensor]:
    return _final_weights(undisturbed_run)


def _alive_actors(cluster) -> list[list[str]]:
    """[class, node id] of the cluster's live actors, from the GCS's actor table (Ray's state API needs the
    dashboard), asked from a process of its own (this one never joins the cluster)."""
    return [entry[:2] for entry in _ask_cluster(cluster, "[[a['ActorClassName'], a['Address']['NodeID'], a['Pid']] "
                                                         "for a in actors().values() if a['State'] == 'ALIVE']")]


def _site_worker_pids(cluster) -> list[int]:
    """The site actors' processes: the worker nodes' raylets' children titled ray::SiteWorker (found in
    milliseconds, while a job's rounds take less than one)."""
    import psutil

    pids = []
    for node in cluster.worker_nodes_in_use:
        raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
        pids += [child.pid for child in raylet.children(recursive=True)
                 if " ".join(child.cmdline()).startswith("ray::SiteWorker")]
    return sorted(pids)


def _ask_cluster(cluster, expression: str):
    """`expression` (JSON-able; `actors` and `ray` in scope) evaluated by a driver of its own on the cluster."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); from ray._private.state import actors;"
            "print(json.dumps(" + expression + "))")
    done = subprocess.run([sys.executable, "-c", code % cluster.address], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_worker_node_lost_mid_run_costs_time_not_bits(cluster, tiny_cifar, tmp_path, undisturbed):
    run_dir = tmp_path / "run"
    process = _start(cluster, tiny_cifar, run_dir)
    _wait_for_round(run_dir, process, 1)
    lost = cluster.worker_nodes_in_use[0]
    cluster.remove_node(lost, allow_graceful=False)  # its raylet and every worker process on it: gone
    assert process.poll() is None and len(_rounds(run_dir)) < 4, "the node should go mid-run"
    # A node that joins mid-run gets the lost site actor, which Ray restarts there.
    cluster.worker_nodes_in_use = [cluster.worker_nodes_in_use[1], cluster.add_node(**NODE)]
    _finish(process)

    rounds = _rounds(run_dir)
    # Every site answered every round: the tasks lost with the node ran again on a live worker.
    assert [sorted(r["sites"]) for r in rounds] == [[f"site-{k}" for k in range(1, 5)]] * 4
    assert all(not r["failures"] for r in rounds)
    assert _same_bits(_final_weights(run_dir), undisturbed)
    print("round seconds with a node lost after round 1:", [round(r["seconds"], 2) for r in rounds])


def test_two_jobs_share_a_cluster_and_a_killed_driver_takes_only_its_own_actors(cluster, tiny_cifar, tmp_path,
                                                                                undisturbed):
    # One site actor each (one CPU): each job on a node of its own, at once.
    one_actor = ("site.num_actors=1", "site.num_cpus=1")
    kept, killed = tmp_path / "kept" / "run", tmp_path / "killed" / "run"
    kept.parent.mkdir(), killed.parent.mkdir()
    doomed = _start(cluster, tiny_cifar, killed, *one_actor, "rounds=40")
    survivor = _start(cluster, tiny_cifar, kept, *one_actor)
    _wait_for_round(killed, doomed, 1)
    # The controllers are on their drivers' node (the head here), never on a worker node that may go;
    # the site actors on the worker nodes.
    placed = _alive_actors(cluster)
    assert {node for name, node in placed if name == "Controller"} == {cluster.head_node.node_id}
    assert {node for name, node in placed if name == "SiteWorker"} <= {n.node_id for n in cluster.worker_nodes_in_use}
    _wait_for_round(kept, survivor, 1)
    doomed.send_signal(signal.SIGKILL)  # its driver dies outright: no cleanup of its own
    doomed.communicate(timeout=30)
    _finish(survivor)
    # The survivor got the weights it gets alone (and as with two actors: fedray's bits do not depend on that).
    assert _same_bits(_final_weights(kept), undisturbed)
    # Its run folder is its own: the killed job wrote only into its own.
    assert len(_rounds(kept)) == 4 and 1 <= len(_rounds(killed)) < 40
    # Ray ends a dead driver's job: its actors (controller, site worker) go within 30 s.
    deadline = time.monotonic() + 30
    while (alive := _alive_actors(cluster)) and time.monotonic() < deadline:
        time.sleep(1)
    assert alive == []


def test_a_lost_head_ends_the_run_within_seconds_and_resume_gives_the_undisturbed_bits(job_config, ray_session,
                                                                                       tiny_cifar, tmp_path):
    """The head, here also the driver's node, goes without grace mid-run: Ray ends the driver process
    itself within seconds (its core worker exits once its raylet is gone, before any Python handler runs:
    the reason is in Ray's driver log only); every finished round is on disk, whole, and resume= (on
    another Ray) ends with the bits of a run that never stopped."""
    from ray.cluster_utils import Cluster

    from fedray import run_job
    from fedray.records.checkpoint import load

    rounds = ("rounds=8",)
    straight = run_job(job_config(*JOB, *rounds), tmp_path / "straight")  # the session's Ray
    assert straight["status"] == "completed"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 100 << 20, "include_dashboard": False,
        "_system_config": FAST_HEALTH_CHECKS})
    try:
        cluster.add_node(num_cpus=2, object_store_memory=100 << 20)
        cluster.wait_for_nodes(timeout=60)
        run_dir = tmp_path / "run"
        process = _start(cluster, tiny_cifar, run_dir, *rounds)
        _wait_for_round(run_dir, process, 2)
        lost_at = time.monotonic()
        cluster.remove_node(cluster.head_node, allow_graceful=False)
        out, err = process.communicate(timeout=120)
        ended_after = time.monotonic() - lost_at
    finally:
        cluster.shutdown()
    assert process.returncode != 0 and ended_after < 30, (ended_after, (out + err)[-2000:])
    kept = len(_rounds(run_dir))
    assert 2 <= kept < 8
    # The checkpoint is whole: at the last round in rounds.jsonl, or the one before when the head went
    # between that round's log line and its commit (the manifest, written last); resume redoes that round.
    assert load(run_dir)["next_round"] in (kept - 1, kept)
    assert not list(run_dir.rglob("*.tmp"))
    print(f"head lost after round {kept}: the driver ended {ended_after:.1f} s later")

    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    done = subprocess.run([sys.executable, "-m", "fedray.run", f"resume={run_dir}"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert len(_rounds(run_dir)) == 8
    assert _same_bits(_final_weights(run_dir), _final_weights(tmp_path / "straight"))


# A token cluster from a process of its own: Ray reads RAY_AUTH_MODE once, at import, and this process's
# Ray runs without authentication (tests/conftest.py). It prints the address, and stops when stdin closes.
TOKEN_CLUSTER = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 100 << 20,
                                                        "include_dashboard": False})
print(cluster.address, flush=True)
sys.stdin.read()
cluster.shutdown()
"""


def test_a_cluster_with_token_authentication_is_joined_with_the_users_token_and_a_wrong_one_is_one_line(
        tiny_cifar, tmp_path, monkeypatch):
    token = "fedray-test-token-0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    host = subprocess.Popen([sys.executable, "-c", TOKEN_CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "RAY_ADDRESS": ""})
    try:
        address = host.stdout.readline().strip()
        assert address, "the token cluster did not start"
        cluster = type("Joined", (), {"address": address})
        run_dir = tmp_path / "run"
        _finish(_start(cluster, tiny_cifar, run_dir, "rounds=1"))  # the user's token, from the environment
        assert len(_rounds(run_dir)) == 1
        monkeypatch.setenv("RAY_AUTH_TOKEN", "a-wrong-token-0000000000000000000000000000")
        wrong = _start(cluster, tiny_cifar, tmp_path / "wrong", "rounds=1")
        out, err = wrong.communicate(timeout=180)
    finally:
        host.communicate(input="", timeout=120)  # its Cluster shuts down the processes it started
    lines = [line for line in err.splitlines() if line.startswith("fedray:")]
    assert wrong.returncode == 2 and len(lines) == 1 and "Traceback" not in out + err, (out + err)[-3000:]
    assert "refused this driver's token" in lines[0] and "RAY_AUTH_TOKEN" in lines[0]



# The soak's faults: each job's extra overrides, and what it must end with ("undisturbed": completed with the
# undisturbed bits; "hung_site": completed without the hung site's updates; "one_line": failed in one line).
SOAK_JOBS = {
    "kill_worker": ((), "undisturbed"),
    "kill_two_workers": ((), "undisturbed"),
    "remove_node": ((), "undisturbed"),
    "none": ((), "undisturbed"),
    # Ray's RPC fault injection in the driver's process (RPC_KINDS): its calls to the controller (start, drain),
    # the actors' leases and creation, the sites' start-up lose their request or their answer at random.
    "rpc_failures": ((), "undisturbed"),
    # The controller's process killed: one line, and resume= on the same cluster gives the undisturbed bits.
    "kill_controller": ((), "undisturbed"),
    # Another job holds one of the cluster's two CPUs for good: the second site actor never fits.
    "never_fits": (("site.start_timeout=8",), "one_line"),
    # site-2 sleeps in every training batch: given up after train_timeout each round, its worker restarted.
    # The driver's run folder on a file system that fills in round 1 or 2 (a tmpfs in a namespace of the driver's
    # own): one line, then resume= after space is freed, on the same cluster.
    "disk_full": (("workflows.cross_site_validate.enabled=false",), "disk_full"),
    "hung_site": (("site.num_actors=4", "site.num_cpus=0.5", "model._target_=tests.fault_models.FaultyNet",
                   "+model.slow_sites=[site-2]", "+model.delay=600", "min_clients=3", "site.stop_timeout=2",
                   "workflows.scatter_and_gather.train_timeout=4", "python_path=[" + str(REPO) + "]"), "hung_site"),
}
# The RPCs that fail (Ray's names; each checked to be honoured: a 100% failure of it delays its call): every
# actor call (PushTask); a worker leased for an actor (RequestWorkerLease); the GCS asked to register and
# create an actor, about a named actor, and for a key (the job's config, functions, runtime env).
RPC_KINDS = ("CoreWorkerService.grpc_client.PushTask", "NodeManagerService.grpc_client.RequestWorkerLease",
             "ray::rpc::ActorInfoGcsService.grpc_client.RegisterActor", "ray::rpc::ActorInfoGcsService.grpc_client.CreateActor",
             "ray::rpc::ActorInfoGcsService.grpc_client.GetNamedActorInfo",
             "ray::rpc::InternalKVGcsService.grpc_client.InternalKVGet")


def _rpc_failures(percent: int) -> str:
    """RAY_testing_rpc_failure: each of RPC_KINDS loses its request, or its answer, `percent`% of the time."""
    return json.dumps({kind: {"num_failures": -1, "req_failure_prob": percent, "resp_failure_prob": percent}
                       for kind in RPC_KINDS})


HOLD_A_CPU = """
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
holder = ray.remote(num_cpus=1)(type("Holder", (), {"ready": lambda self: True})).remote()
ray.get(holder.ready.remote(), timeout=60)
print("holding", flush=True)
sys.stdin.read()
"""


@contextmanager
def _holding_a_cpu(cluster):
    """Another job on the cluster that holds one CPU (an idle actor) until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_CPU, cluster.address], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "RAY_ADDRESS": ""})
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def _process_titled(node, title: str) -> list[int]:
    """Processes under a node's raylet whose title starts with `title` (ray::SiteWorker, ray::Controller)."""
    import psutil

    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    return sorted(child.pid for child in raylet.children(recursive=True) if " ".join(child.cmdline()).startswith(title))


def test_a_seeded_chaos_soak_ends_every_job_with_its_undisturbed_bits_and_frees_the_cluster(cluster, tiny_cifar,
                                                                                           tmp_path, undisturbed,
                                                                                           undisturbed_run):
    """Ten jobs one after another on the 3-node cluster, in an order drawn from a seeded generator, each hit by
    its fault after its first round (or from its start): site worker processes killed, a worker node removed
    (and a new one added), failed RPCs, the controller killed (then resume=), sites that never fit, a hung
    site, the run folder's disk full (then resume=). Each ends as promised within its bound; afterwards every CPU of the cluster is free within 60 s and
    no actor of the jobs is left."""
    import random

    faults = [*SOAK_JOBS, "remove_node"]
    random.Random(2026).shuffle(faults)
    began, seconds = time.monotonic(), {}
    for index, fault in enumerate(faults):
        overrides, promise = SOAK_JOBS[fault]
        run_dir = tmp_path / f"job-{index}" / "run"
        run_dir.parent.mkdir()
        started = time.monotonic()
        env = {"RAY_testing_rpc_failure": _rpc_failures(10)} if fault == "rpc_failures" else {}
        if promise == "one_line":
            with _holding_a_cpu(cluster):
                process = _start(cluster, tiny_cifar, run_dir, *overrides)
                out, err = process.communicate(timeout=120)
            lines = err.strip().splitlines()
            assert process.returncode == 1 and lines[-1].startswith("fedray: site actors not up within "
                                                                    "site.start_timeout=8 s"), (out + err)[-2000:]
            assert time.monotonic() - started < 8 + 40, "more than start-up and start_timeout"
            seconds[fault] = time.monotonic() - started
            continue
        if promise == "disk_full":
            _fill_the_disk_then_resume(cluster, tiny_cifar, run_dir.parent, undisturbed_run, undisturbed, overrides)
            seconds[fault] = time.monotonic() - started
            continue
        process = _start(cluster, tiny_cifar, run_dir, *overrides, env=env)
        _wait_for_round(run_dir, process, 1)
        workers = _site_worker_pids(cluster)
        assert workers, "no site worker process found on the worker nodes"
        if fault.startswith("kill_") and fault != "kill_controller":
            for pid in workers[: 2 if fault == "kill_two_workers" else 1]:
                os.kill(pid, signal.SIGKILL)  # as the OOM killer would
        elif fault == "remove_node":
            lost = cluster.worker_nodes_in_use[0]
            cluster.remove_node(lost, allow_graceful=False)
            cluster.worker_nodes_in_use = [cluster.worker_nodes_in_use[1], cluster.add_node(**NODE)]
        elif fault == "kill_controller":
            [controller] = _process_titled(cluster.head_node, "ray::Controller")
            os.kill(controller, signal.SIGKILL)
            killed_at = time.monotonic()
            out, err = process.communicate(timeout=120)
            last = err.strip().splitlines()[-1]
            assert process.returncode == 1 and last.startswith("fedray: the controller is gone (") and \
                f"resume={run_dir} continues it" in last, (out + err)[-2000:]
            assert time.monotonic() - killed_at < 30
            process = subprocess.Popen([sys.executable, "-m", "fedray.run", f"resume={run_dir}",
                                        f"ray.address={cluster.address}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env={**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""},
                                       cwd=run_dir.parent)
        if fault not in ("none", "rpc_failures", "hung_site"):
            assert fault == "kill_controller" or (process.poll() is None and len(_rounds(run_dir)) < 4), \
                f"{fault} came after the job's end"
        _finish(process)
        seconds[fault] = time.monotonic() - started
        rounds = _rounds(run_dir)
        if promise == "hung_site":
            assert [sorted(r["sites"]) for r in rounds] == [["site-1", "site-3", "site-4"]] * 4
            assert all(r["failures"]["site-2"]["kind"] in ("timeout", "abandoned") for r in rounds), rounds[0]["failures"]
            assert seconds[fault] < 4 * (4 + 2) + 60, "more than a train_timeout a round, and start-up"
            continue
        assert [len(r["sites"]) for r in rounds] == [4] * 4 and all(not r["failures"] for r in rounds), fault
        assert _same_bits(_final_weights(run_dir), undisturbed), fault
    soak_seconds = time.monotonic() - began
    deadline = time.monotonic() + 60
    while True:
        free, total, alive = _ask_cluster(
            cluster, "[ray.available_resources().get('CPU', 0), ray.cluster_resources().get('CPU', 0), "
                     "[a['ActorClassName'] for a in actors().values() if a['State'] == 'ALIVE']]")
        # No process of the jobs is left (Ray's own idle workers, titled ray::IDLE, may stay for the next job).
        left = [pid for node in [cluster.head_node, *cluster.worker_nodes_in_use]
                for title in ("ray::Controller", "ray::SiteWorker", "ray::Holder") for pid in _process_titled(node, title)]
        if (free == total and not alive and not left) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert free == total == 2 and alive == [] and left == [], (free, total, alive, left)
    print(f"soak: {len(faults)} jobs in {soak_seconds:.0f} s:", {f: round(t) for f, t in seconds.items()})


def _fill_the_disk_then_resume(cluster, tiny_cifar: str, folder: Path, undisturbed_run: Path,
                               undisturbed: dict[str, torch.Tensor], overrides: tuple[str, ...]) -> None:
    """A driver whose run folder is on a small file system that fills in round 1 or 2 (room for round 0's
    models and checkpoint, not for round 1's new versions beside them): it ends in one line, its last
    checkpoint whole; with the space freed, resume= on the same cluster gives the undisturbed bits."""
    small_fs = small_fs_or_skip(folder / "probe")
    model_size = (undisturbed_run / "models" / "FL_global_model.pt").stat().st_size
    out = folder / "out"
    out.mkdir()
    done = small_fs(folder / "small", "16m", sys.executable, "-c", FULL_THEN_RESUME, str(folder / "small"), str(out),
                    str(3 * model_size + 64 * 1024), f"data.root={tiny_cifar}", "data.download=false",
                    "data.check_integrity=false", *JOB, f"ray.address={cluster.address}", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    code, stdout, stderr = result["first"]
    errors = [line for line in stderr.splitlines() if line.startswith("fedray:")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in stdout + stderr, stderr[-3000:]
    assert errors[0].startswith(f"fedray: no space left on the file system of {result['run']}/"), errors[0]
    code, stdout, stderr = result["second"]
    assert code == 0, stderr[-3000:]
    assert [len(r["sites"]) for r in _rounds(out / "resumed")] == [4] * 4
    assert _same_bits(_final_weights(out / "resumed"), undisturbed)


def test_failed_rpcs_injected_by_ray_cost_a_retry_not_the_run(tiny_cifar, tmp_path, undisturbed, monkeypatch):
    """Ray's own fault injection (RAY_testing_rpc_failure, in every process of the cluster and the driver):
    5% of the calls of each of RPC_KINDS lose their request and 5% their answer. Actor calls come back
    "temporarily unavailable" (Ray cannot tell whether the call ran): the driver's ready(), start and drain
    calls to the controller, each site actor's fetch of the data, the controller's tasks to the sites; the
    leases, the actors' registration and creation and the GCS's keys Ray asks again itself. Each is asked again (safe: start starts nothing
    twice, drain drops only what the driver says it took, a site's task gives the same bits twice), and a
    lost call is not taken for a dead worker (its next ready() comes from the same process): the run ends
    with the undisturbed bits, every site in every round."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_testing_rpc_failure", _rpc_failures(5))
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 100 << 20, "include_dashboard": False,
        "_system_config": FAST_HEALTH_CHECKS})
    try:
        for _ in range(2):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes(timeout=60)
        run_dir = tmp_path / "run"
        _finish(_start(cluster, tiny_cifar, run_dir))
    finally:
        cluster.shutdown()
    assert [len(r["sites"]) for r in _rounds(run_dir)] == [4] * 4
    assert all(not r["failures"] for r in _rounds(run_dir))
    assert _same_bits(_final_weights(run_dir), undisturbed)
