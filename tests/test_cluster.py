"""A fedray job submitted through the Ray Jobs API to a separately started Ray head, unchanged.

The head is private to the test: its own --temp-dir and free ports on loopback, no auth
(RAY_AUTH_MODE=disabled on both sides), and it is stopped by the process ids it started,
never by `ray stop` (which kills every Ray of the user on the machine).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
HEAD_START_TIMEOUT = 120
JOB_TIMEOUT = 300
STOP_TIMEOUT = 30
PORT_FLAGS = (
    "--port", "--dashboard-port", "--ray-client-server-port", "--node-manager-port", "--object-manager-port",
    "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
)
NUM_WORKER_PORTS = 32


@pytest.fixture
def private_head():
    """A Ray head with the dashboard (the Jobs API), as `ray start --head` starts one for users."""
    # Short: Ray puts Unix sockets under it, and their paths must fit in 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="frh", dir="/tmp")
    ports = _free_ports(len(PORT_FLAGS) + NUM_WORKER_PORTS)
    flags = dict(zip(PORT_FLAGS, ports))
    worker_ports = ",".join(map(str, ports[len(PORT_FLAGS):]))
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    command = [
        str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
        f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--disable-usage-stats",
        *(f"{flag}={port}" for flag, port in flags.items()), f"--worker-port-list={worker_ports}",
    ]
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, temp_dir, ignore_errors=True)
        log = cleanup.enter_context(open(Path(temp_dir) / "head.out", "w"))
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        cleanup.callback(_stop_head, head, temp_dir)
        yield _jobs_client(f"http://127.0.0.1:{flags['--dashboard-port']}", head, Path(temp_dir) / "head.out")


def test_job_submitted_to_a_ray_head_runs_unchanged_and_leaves_its_outputs(private_head, tiny_cifar, tmp_path):
    client = private_head
    run_dir = tmp_path / "run"
    # What the README tells users to type, with the test's tiny data; python: this venv's.
    entrypoint = shlex.join([
        sys.executable, "-m", "fedray.run", f"data.root={tiny_cifar}", "data.download=false",
        "data.check_integrity=false", "num_clients=2", "rounds=1", f"hydra.run.dir={run_dir}",
    ])
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(REPO)})

    status = _wait_for_job(client, job_id, JOB_TIMEOUT)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "round 1/1" in logs and "2 sites on" in logs

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and [r["round"] for r in summary["rounds"]] == [0]
    assert set(summary["rounds"][0]["sites"]) == {"site-1", "site-2"}
    for name in ("FL_global_model.pt", "best_FL_global_model.pt"):
        assert (run_dir / "models" / name).stat().st_size > 0
    assert (run_dir / ".hydra" / "config.yaml").is_file() and "round 1/1" in (run_dir / "run.log").read_text()


def _free_ports(count: int) -> list[int]:
    """Ports the OS has free now; held together while picking so that they are distinct."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _jobs_client(address: str, head: subprocess.Popen, log: Path) -> JobSubmissionClient:
    deadline = time.monotonic() + HEAD_START_TIMEOUT
    while True:
        if head.poll() is not None:
            pytest.fail(f"ray start --head exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return JobSubmissionClient(address)
        except ConnectionError:
            if time.monotonic() > deadline:
                pytest.fail(f"the Jobs API at {address} not up within {HEAD_START_TIMEOUT} s:\n{log.read_text()[-3000:]}")
            time.sleep(1)


def _wait_for_job(client: JobSubmissionClient, job_id: str, timeout: float) -> JobStatus:
    deadline = time.monotonic() + timeout
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            pytest.fail(f"job {job_id} still {status} after {timeout} s:\n{client.get_job_logs(job_id)[-3000:]}")
        time.sleep(1)
    return status


def _stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    """Stop the head and whatever it started: its descendants, and any process naming its temp dir."""
    processes = []
    try:
        processes = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
    for process in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in process.info["cmdline"] or ()) and process not in processes:
            processes.append(process)
    # `ray start --block` stops its own processes on SIGTERM (~10 s); signalling them all at once is slower.
    head.terminate()
    _, alive = psutil.wait_procs(processes, timeout=STOP_TIMEOUT)
    for process in alive:
        _signal(process.kill)
    psutil.wait_procs(alive, timeout=STOP_TIMEOUT)


def _signal(send) -> None:
    try:
        send()
    except psutil.NoSuchProcess:
        pass
