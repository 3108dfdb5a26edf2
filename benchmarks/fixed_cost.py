"""What a fedray job pays around its rounds on a private local Ray: Ray's start, the actors' start, the shutdown.

    python benchmarks/fixed_cost.py                       # every variant, 3 repeats, alternating
    python benchmarks/fixed_cost.py --variants fedray no_prestart --repeats 1
    python benchmarks/fixed_cost.py --imports             # what each of fedray's processes imports (-X importtime)

Each repeat of a variant is a fresh Python process that does what fedray's driver does
around the rounds, with nothing else: `import ray` and torch (as fedray.driver.job does), `ray.init` as fedray/driver/cluster.py calls
it (plus the variant's options or environment), then fedray's actors on 2 cores (2 site
actors that import fedray.site.worker and make a torch optimizer, as SiteWorker.__init__ does,
a controller-like actor that imports fedray.server.controller and a mailbox-like one that imports
fedray.site.metric_stream), each answering a ready() call; then every actor killed and `ray.shutdown()`.
Printed per variant (medians): the seconds of each phase, the Ray processes started, and the
CPU seconds each kind of process used until the actors were ready (on 2 cores, CPU seconds
beyond 2 per wall second are time the job waits). Saved as JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent

# name -> (ray.init options beyond fedray's, environment variables, what it tests)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, str], str]] = {
    "fedray": ({}, {}, "fedray/driver/cluster.py's ray.init today"),
    "no_prestart": ({"_system_config": {"prestart_worker_first_driver": False}}, {},
                    "no idle workers started for the driver at ray.init"),
    "no_metrics": ({"_system_config": {"enable_metrics_collection": False}}, {"RAY_enable_open_telemetry": "0"},
                   "no metrics collection or export"),
    "no_task_events": ({"_system_config": {"enable_core_worker_task_event_to_gcs": False,
                                           "task_events_report_interval_ms": 0}}, {},
                       "no task events reported to the GCS (the state API and dashboard's)"),
    "no_log_to_driver": ({"log_to_driver": False}, {}, "workers' prints not forwarded to the driver"),
    "no_auth": ({}, {"RAY_AUTH_MODE": "disabled"}, "no token authentication (a private head on loopback)"),
    # Not Ray's options: what fedray's own code could change.
    "site_without_optim": ({}, {"FIXED_COST_SITE_OPTIMIZER": "0"},
                           "site actors make no torch.optim optimizer (its first use imports torch._dynamo)"),
    "torch_during_init": ({}, {"FIXED_COST_DRIVER_TORCH": "during"},
                          "the driver imports torch in a thread while ray.init runs, not before it"),
    "monitor_killed_first": ({}, {"FIXED_COST_KILL_MONITOR": "1"},
                             "the autoscaler's monitor (no use to a one-node local job) SIGKILLed before ray.shutdown"),
    "torch_in_workers": ({}, {"FIXED_COST_TORCH_HOOK": "1"},
                         "every worker of the job imports torch as it starts (runtime_env worker_process_setup_hook): "
                         "the 2 workers Ray prestarts at ray.init do it while the driver goes on"),
    "sites_only": ({}, {"FIXED_COST_LIGHT_ACTORS": "0"},
                   "no controller or mailbox process (their work done in the driver's process)"),
    "lean": ({}, {"FIXED_COST_LIGHT_ACTORS": "0", "FIXED_COST_TORCH_HOOK": "1", "FIXED_COST_SITE_OPTIMIZER": "0",
                  "FIXED_COST_DRIVER_TORCH": "during", "FIXED_COST_KILL_MONITOR": "1"},
             "sites_only + torch_in_workers + site_without_optim + torch_during_init + monitor_killed_first"),
}
KINDS = ("gcs_server", "raylet", "dashboard", "dashboard_agent", "runtime_env_agent", "log_monitor", "monitor",
         "worker", "other")


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = _parse(argv)
    if args.child:
        print(json.dumps(_child(args.child)))
        return {}
    if args.imports:
        report = imports()
        print(json.dumps(report, indent=2))
        return report
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.variants}
    for repeat in range(args.repeats):
        for name in args.variants:
            runs[name].append(_run_child(name, args.timeout))
            run = runs[name][-1]
            print(f"[{repeat + 1}/{args.repeats}] {name:20s} init {run['ray_init']:5.2f} s  actors "
                  f"{run['actors_ready']:5.2f} s  shutdown {run['shutdown']:5.2f} s  total {run['total']:5.2f} s",
                  file=sys.stderr, flush=True)
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average": list(os.getloadavg()),
        "variants": {name: {"description": VARIANTS[name][2], **_medians(r), "runs": r} for name, r in runs.items()},
    }
    path = Path(args.results_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-fixed-cost.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(_table(results) + f"\nsaved {path}")
    return results


def _child(variant: str) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import psutil

    began = time.perf_counter()
    import logging
    import threading

    import ray

    # fedray's driver imports torch (fedray.records.checkpoint, fedray.records.recorder) before it starts Ray.
    torch_import = threading.Thread(target=__import__, args=("torch",))
    if os.environ.get("FIXED_COST_DRIVER_TORCH", "before") == "before":
        torch_import.run()
    timings: dict[str, float] = {"imports": time.perf_counter() - began}
    options, _, _ = VARIANTS[variant]
    clock = time.perf_counter()
    if os.environ.get("FIXED_COST_DRIVER_TORCH") == "during":
        torch_import.start()
    if os.environ.get("FIXED_COST_TORCH_HOOK") == "1":
        options = {**options, "runtime_env": {"worker_process_setup_hook": _import_torch}}
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, logging_level=logging.WARNING,
             **{"log_to_driver": True, **options})
    if torch_import.is_alive() or os.environ.get("FIXED_COST_DRIVER_TORCH") == "during":
        torch_import.join()
    timings["ray_init"] = time.perf_counter() - clock
    me = psutil.Process()
    started = {kind: 0 for kind in KINDS}
    for process in me.children(recursive=True):
        started[_kind(process)] += 1

    clock = time.perf_counter()
    site = ray.remote(num_cpus=1)(_SiteLike)
    light = ray.remote(num_cpus=0)(_Importer)
    actors = [site.remote(), site.remote()]
    if os.environ.get("FIXED_COST_LIGHT_ACTORS", "1") == "1":
        actors += [light.remote("fedray.server.controller"), light.remote("fedray.site.metric_stream")]
    ray.get([actor.ready.remote() for actor in actors], timeout=300)
    timings["actors_ready"] = time.perf_counter() - clock
    cpu = {kind: 0.0 for kind in KINDS}
    running = {kind: 0 for kind in KINDS}
    for process in me.children(recursive=True):
        try:
            times = process.cpu_times()
            cpu[_kind(process)] += times.user + times.system
            running[_kind(process)] += 1
        except psutil.Error:
            continue
    driver = me.cpu_times()
    stopping = _time_each_process_stop(ray)

    clock = time.perf_counter()
    for actor in actors:
        ray.kill(actor)
    if os.environ.get("FIXED_COST_KILL_MONITOR") == "1":
        # Through Ray's private node object: the measurement of a proposal, see the report.
        for info in ray._private.worker._global_node.all_processes.get("monitor", []):
            info.process.kill()
    ray.shutdown()
    timings["shutdown"] = time.perf_counter() - clock
    timings["total"] = time.perf_counter() - began
    return {**{k: round(v, 3) for k, v in timings.items()}, "processes": started, "processes_when_ready": running,
            "shutdown_by_process": {kind: round(seconds, 3) for kind, seconds in stopping.items()},
            "cpu_seconds": {**{k: round(v, 2) for k, v in cpu.items()}, "driver": round(driver.user + driver.system, 2)}}


def _import_torch() -> None:
    import torch  # noqa: F401


def _time_each_process_stop(ray) -> dict[str, float]:
    """Instruments Ray's node (measurement only): the seconds ray.shutdown spends stopping each kind of process
    (it SIGTERMs them one after another and waits up to a second for each)."""
    node = ray._private.node.Node
    seconds: dict[str, float] = {}
    original = node._kill_process_type

    def timed(self, process_type, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, process_type, *args, **kwargs)
        finally:
            seconds[process_type] = seconds.get(process_type, 0.0) + time.perf_counter() - started

    node._kill_process_type = timed
    return seconds


class _Importer:
    def __init__(self, module: str) -> None:
        import importlib

        importlib.import_module(module)

    def ready(self) -> bool:
        return True


class _SiteLike:
    """What a SiteWorker's start costs beyond the data: its module, a model and an optimizer."""

    def __init__(self) -> None:
        import torch

        import fedray.site.worker  # noqa: F401
        from fedray.models import Net

        torch.set_num_threads(1)
        model = Net()
        if os.environ.get("FIXED_COST_SITE_OPTIMIZER", "1") == "1":
            torch.optim.SGD(model.parameters(), lr=0.01)

    def ready(self) -> bool:
        return True


def _kind(process) -> str:
    """Which of Ray's processes this is, by its command line (workers and agents retitle themselves ray::...)."""
    try:
        command = " ".join(process.cmdline())
    except Exception:
        return "other"
    for kind, mark in (("gcs_server", "gcs_server"), ("raylet", "/raylet "), ("dashboard_agent", "ray::DashboardAgent"),
                       ("runtime_env_agent", "ray::RuntimeEnvAgent"), ("dashboard", "dashboard/dashboard.py"),
                       ("log_monitor", "log_monitor.py"), ("monitor", "autoscaler/_private/monitor.py"),
                       ("worker", "ray::"), ("worker", "default_worker.py")):
        if mark in command:
            return kind
    return "other"


def _run_child(variant: str, timeout: float) -> dict[str, Any]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **VARIANTS[variant][1]}
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", variant], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(REPO))
    if done.returncode != 0:
        raise SystemExit(f"fixed_cost: variant {variant} failed:\n{done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_wall": round(time.perf_counter() - started, 3)}


def imports() -> dict[str, Any]:
    """Seconds each of fedray's processes spends importing its module, and the biggest parts."""
    report = {}
    for module in ("fedray.run", "fedray.site.worker", "fedray.server.controller", "fedray.site.metric_stream"):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO), timeout=300)
        rows = []  # (depth, module, cumulative microseconds); depth 1: imported by the module itself
        for line in done.stderr.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[1].strip().isdigit():
                name = parts[2][1:]
                rows.append(((len(name) - len(name.lstrip())) // 2, name.strip(), int(parts[1])))
        total = next(us for depth, name, us in rows if name == module and depth == 0)
        direct = sorted(((name, us) for depth, name, us in rows if depth == 1), key=lambda row: -row[1])
        report[module] = {"seconds": round(total / 1e6, 3),
                          "biggest": {name: round(us / 1e6, 3) for name, us in direct[:6]}}
    return report


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("imports", "ray_init", "actors_ready", "shutdown", "total", "process_wall")
    return {
        **{key: round(statistics.median(r[key] for r in runs), 3) for key in keys},
        "processes": runs[0]["processes"],
        "processes_when_ready": runs[0]["processes_when_ready"],
        "shutdown_by_process": {kind: round(statistics.median(r["shutdown_by_process"].get(kind, 0.0) for r in runs), 3)
                                for kind in runs[0]["shutdown_by_process"]},
        "cpu_seconds": {kind: round(statistics.median(r["cpu_seconds"][kind] for r in runs), 2)
                        for kind in runs[0]["cpu_seconds"]},
    }


def _table(results: dict[str, Any]) -> str:
    rows = [f"load average {results['load_average'][0]:.2f}; seconds (medians); CPU seconds until the actors were ready",
            f"{'variant':20s}{'import':>8s}{'init':>7s}{'actors':>8s}{'shutdown':>9s}{'total':>7s}{'process':>8s}"
            f"   CPU: {' '.join(k[:10] for k in KINDS)} driver"]
    for name, v in results["variants"].items():
        cpu = " ".join(f"{v['cpu_seconds'][k]:>{len(k[:10])}.1f}" for k in KINDS)
        rows.append(f"{name:20s}{v['imports']:8.2f}{v['ray_init']:7.2f}{v['actors_ready']:8.2f}{v['shutdown']:9.2f}"
                    f"{v['total']:7.2f}{v['process_wall']:8.2f}        {cpu} {v['cpu_seconds']['driver']:6.1f}")
    first = next(iter(results["variants"].values()))
    rows.append("processes started by ray.init: " + ", ".join(f"{k} {n}" for k, n in first["processes"].items() if n))
    rows.append("when the actors are ready: " + ", ".join(f"{k} {n}" for k, n in first["processes_when_ready"].items() if n))
    rows.append("shutdown seconds by process: " + ", ".join(f"{k} {t:.2f}" for k, t in first["shutdown_by_process"].items()))
    return "\n".join(rows)


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--imports", action="store_true", help="only the import times of fedray's processes")
    parser.add_argument("--child", choices=sorted(VARIANTS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--timeout", type=float, default=600.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
