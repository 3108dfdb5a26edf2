"""A FLARE job folder as fedray overrides: `python -m fedray.run flare_job=PATH [key=value ...]`.

Reads what `nvflare job create` and FLARE's Job API write: `meta.json|conf` (deploy_map,
min_clients), each app's `config/config_fed_server.json|conf` and `config_fed_client.json|conf`
(JSON, or HOCON through pyhocon), and `custom/`. The server's workflows and components and the
client's executor become overrides; the client's script runs unchanged (`import nvflare.client`
is served by fedray.client inside the site, see fedray/flare/nvflare_alias.py).

Every FLARE class fedray meets is looked up in COMPONENTS, the one place to add a mapping:
a handler that turns its args into overrides, or a reason for a warning (logging, persistence,
plumbing: the run is the same) or an error (it changes the math and fedray has no equivalent).
A class that is not there is an error: fedray cannot tell what it would change.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from fedray.config import ConfigError
from fedray.flare import he_job
from fedray.privacy import flare_filters

SERVER = "server"
ALL_SITES = "@ALL"
SAG = "workflows.scatter_and_gather"
PRE = "workflows.pre_train"
CSV = "workflows.cross_site_validate"


@dataclass
class _Job:
    """What the translation has found so far."""

    folder: Path
    server: dict[str, Any]
    components: dict[str, dict[str, Any]]  # the server's components by id
    server_app: Path  # the server app's folder
    overrides: dict[str, Any] = field(default_factory=dict)  # key -> value, in the order found
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)  # component ids a workflow refers to
    result_filters: dict[str, list] = field(default_factory=dict)  # client app -> its task_result_filters
    transfer_types: set[str] = field(default_factory=set)  # its Client API executors' params_transfer_type
    he_parts: set[str] = field(default_factory=set)  # FLARE's HE components found (fedray/flare/he_job.py)

    def set(self, key: str, value: Any) -> None:
        self.overrides[key] = value

    def component(self, component_id: Optional[str], role: str) -> None:
        """Translate the server component a workflow names (its aggregator, persistor ...)."""
        if not component_id:
            return
        if component_id not in self.components:
            self.errors.append(f"{role} '{component_id}': no component with that id in config_fed_server")
            return
        self.used.add(component_id)
        _translate(self, self.components[component_id], f"component '{component_id}'")


def translate(path: str, report: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> list[str]:
    """The overrides that run the FLARE job folder at `path`; warnings go to `report`, one line each.

    Raises ConfigError naming every component that would change the math, before any Ray work.
    """
    folder = Path(path).expanduser().resolve()
    meta = _read_config(folder, "meta")
    if meta is None:
        raise ConfigError(f"flare_job={path}: no meta.json or meta.conf there; give a FLARE job folder")
    server_app, client_apps, sites = _apps(folder, meta, path)
    server = _vars_substituted(_read_app_config(folder / server_app, "config_fed_server", path))
    job = _Job(folder, server, {c.get("id", ""): c for c in server.get("components", [])}, folder / server_app)

    num_sites = len(sites) if sites else meta.get("min_clients")
    job.set("python_path", [str(folder / app / "custom") for app in dict.fromkeys([server_app, *client_apps])
                            if (folder / app / "custom").is_dir()])
    for workflow in server.get("workflows", []):
        _translate(job, workflow, f"workflow '{workflow.get('id', '?')}'")
    names = {_class_name(w) for w in server.get("workflows", [])}
    if not names & {"InitializeGlobalWeights"}:
        job.set(f"{PRE}.enabled", False)  # the persistor's model starts the job: fedray's seeded init
    if not names & {"CrossSiteModelEval"}:
        job.set(f"{CSV}.enabled", False)
    event_components = []
    for component_id, component in job.components.items():
        if component_id in job.used:
            continue
        if _class_name(component) not in COMPONENTS and not _class_path(component).startswith("nvflare."):
            # The job's own component that no workflow names acts on events (cifar10-sim's data splitter at
            # START_RUN): fedray runs it as FLARE's server does (fedray/server/flare_components.py).
            event_components.append(component_id)
            continue
        _translate(job, component, f"component '{component_id}'")
    if event_components:
        job.set("flare.server_app", str(folder / server_app))
        job.set("flare.server_components", event_components)
    _filters(job, server, "config_fed_server")

    client = _client_script(job, folder, client_apps, path)
    if client:
        job.set("site.script", client[0])
        job.set("site.script_args", client[1])
    he_job.finish(job)
    if num_sites and "num_clients" not in job.overrides:
        job.overrides = {"num_clients": num_sites, **job.overrides}

    for line in dict.fromkeys(job.warnings):  # each client app repeats its components
        report(f"fedray: flare_job: warning: {line}")
    if job.errors:
        raise ConfigError(f"flare_job={path}: " + "; ".join(dict.fromkeys(job.errors)))
    return [_override(key, value) for key, value in job.overrides.items()]


def merge_overrides(derived: list[str], given: list[str]) -> list[str]:
    """The derived overrides, less those whose key (or a key above it: `algorithm` for
    `algorithm.mu`) the user gave, then the user's: the user's win."""
    given_keys = {_key(arg) for arg in given if "=" in arg}

    def overridden(key: str) -> bool:
        return any(key == given or key.startswith(given + ".") for given in given_keys)

    return [arg for arg in derived if not overridden(_key(arg))] + list(given)


# ---- the FLARE classes fedray knows -------------------------------------------------------------


def _scatter_and_gather(job: _Job, args: dict[str, Any]) -> None:
    _copy(job, args, {"min_clients": "min_clients", "num_rounds": "rounds", "start_round": f"{SAG}.start_round",
                      "wait_time_after_min_received": f"{SAG}.wait_time_after_min_received",
                      "train_timeout": f"{SAG}.train_timeout", "ignore_result_error": f"{SAG}.ignore_result_error"})
    if args.get("train_task_name", "train") != "train":
        job.warnings.append(f"ScatterAndGather train_task_name={args['train_task_name']}: fedray's task is 'train'")
    if not args.get("persistor_id"):
        job.warnings.append("ScatterAndGather has no persistor_id: fedray starts from model._target_ "
                            "(fedray.models.Net unless set)")
    for arg in ("persist_every_n_rounds", "snapshot_every_n_rounds"):
        if args.get(arg, 1) != 1:
            job.warnings.append(f"ScatterAndGather {arg}={args[arg]}: fedray saves the global model every round")
    job.component(args.get("aggregator_id", "aggregator"), "aggregator_id")
    job.component(args.get("persistor_id"), "persistor_id")
    job.component(args.get("shareable_generator_id", "shareable_generator"), "shareable_generator_id")


def _fed_avg(job: _Job, args: dict[str, Any]) -> None:
    """FLARE's newer FedAvg (ModelController): its num_clients sampled each round, all of them needed."""
    _copy(job, args, {"num_rounds": "rounds", "start_round": f"{SAG}.start_round", "num_clients": "min_clients"})
    _aggregation(job, args, "FedAvg")
    for arg, why in (("stop_cond", "early stopping"), ("patience", "early stopping"),
                     ("aggregator", "a custom aggregator")):
        if args.get(arg) not in (None, 0, 0.0):
            job.errors.append(f"FedAvg {arg}={args[arg]}: {why} is not in fedray yet")
    if args.get("fedprox_mu") not in (None, 0, 0.0):
        # FLARE's FedAvg sends mu in each train task's meta["fedprox_mu"] (its FedProxRecipe); fedray's
        # FedProx does the same for a script (and adds the term itself in fedray's own training).
        job.set("algorithm", "fedprox")
        job.set("algorithm.mu", args["fedprox_mu"])
    if isinstance(args.get("model"), (str, dict)):
        _model(job, args["model"], "FedAvg model")
    persistor = args.get("persistor_id", "persistor")
    if persistor in job.components or "persistor_id" in args:  # FedAvg may hold its model itself instead
        job.component(persistor, "persistor_id")


def _scatter_and_gather_scaffold(job: _Job, args: dict[str, Any]) -> None:
    """ScatterAndGather's arguments, and SCAFFOLD: FLARE adds the round's control-variate updates,
    averaged with the aggregator's weights, to c (fedray's control_weights=steps)."""
    _scatter_and_gather(job, args)
    _scaffold(job)


def _scaffold_controller(job: _Job, args: dict[str, Any]) -> None:
    """FLARE's Scaffold (ModelController, the Job API's): FedAvg's arguments, and SCAFFOLD, whose
    control-variate updates are averaged by NUM_STEPS_CURRENT_ROUND as the models are."""
    _fed_avg(job, args)
    _scaffold(job)


def _scaffold(job: _Job) -> None:
    job.set("algorithm", "scaffold")
    job.set("algorithm.control_weights", "steps")


def _fedopt_generator(job: _Job, args: dict[str, Any]) -> None:
    """PTFedOptModelShareableGenerator (ScatterAndGather's shareable generator): with no
    optimizer_args FLARE takes SGD lr 1.0 (no momentum), with no lr_scheduler_args no schedule."""
    _fedopt(job, args, {"path": "torch.optim.SGD", "args": {"lr": 1.0}}, None, "PTFedOptModelShareableGenerator")


def _fedopt_controller(job: _Job, args: dict[str, Any]) -> None:
    """FLARE's FedOpt (ModelController, the fedopt_pt template's): FedAvg's arguments, and FedOpt
    with that class's defaults (SGD lr 1.0 momentum 0.6, cosine T_max=3 down to 0.9)."""
    _fed_avg(job, args)
    _fedopt(job, args, {"path": "torch.optim.SGD", "args": {"lr": 1.0, "momentum": 0.6}},
            {"path": "torch.optim.lr_scheduler.CosineAnnealingLR", "args": {"T_max": 3, "eta_min": 0.9}}, "FedOpt")


def _fedopt(job: _Job, args: dict[str, Any], optimizer: dict[str, Any], scheduler: Optional[dict[str, Any]],
            owner: str) -> None:
    """FLARE's server optimizer and schedule, {path, args}, as fedray's nodes by _target_: the whole
    node is replaced (deleted, then added), so none of fedray's defaults (momentum, cosine) stay.
    `device` is where the step runs: the same numbers (fedray steps on the CPU)."""
    job.set("algorithm", "fedopt")
    optimizer_node = _torch_class(job, args.get("optimizer_args") or optimizer, f"{owner} optimizer_args", "params")
    if optimizer_node:
        job.set("~algorithm.server_optimizer", None)
        job.set("+algorithm.server_optimizer", optimizer_node)
    scheduler = args["lr_scheduler_args"] if "lr_scheduler_args" in args else scheduler
    if scheduler is None:
        job.set("algorithm.server_lr_scheduler", None)
    else:
        scheduler_node = _torch_class(job, scheduler, f"{owner} lr_scheduler_args", "optimizer")
        if scheduler_node:
            job.set("~algorithm.server_lr_scheduler", None)
            job.set("+algorithm.server_lr_scheduler", scheduler_node)
    source = args.get("source_model", "model")
    if isinstance(source, str) and source in job.components:
        job.used.add(source)  # the model component the persistor names too
        source = job.components[source]
    target = (source.get("path") or source.get("class_path")) if isinstance(source, dict) else None
    if target and job.overrides.get("model._target_", target) != target:
        job.errors.append(f"{owner} source_model {target} is not the persistor's model "
                          f"{job.overrides['model._target_']}: fedray's server optimizer steps the global model")


def _torch_class(job: _Job, spec: Any, where: str, injected: str) -> Optional[dict[str, Any]]:
    """FLARE's {path (or class_path, name), args} of a torch class, as a node with `_target_`;
    FLARE adds `injected` (the parameters, the optimizer) itself, and so does fedray."""
    path = (spec.get("path") or spec.get("class_path") or spec.get("name")) if isinstance(spec, dict) else None
    if not path or "." not in str(path):
        job.errors.append(f"{where}={spec}: give the class's full path, e.g. {{path: torch.optim.SGD, args: {{lr: 1.0}}}}")
        return None
    if str(path).startswith(("tensorflow.", "tf.", "keras.")):
        job.errors.append(f"{where} {path}: a TensorFlow class; fedray's server optimizers are PyTorch's")
        return None
    return {"_target_": path, **{k: v for k, v in (spec.get("args") or {}).items() if k != injected}}


def _initialize_global_weights(job: _Job, args: dict[str, Any]) -> None:
    job.set(f"{PRE}.enabled", True)
    _copy(job, args, {"weight_method": f"{PRE}.weight_method", "task_timeout": f"{PRE}.timeout"})
    client = args.get("weights_client_name")
    if isinstance(client, list) and len(client) > 1:
        job.errors.append("InitializeGlobalWeights weights_client_name lists several sites: fedray takes one")
        return
    client = client[0] if isinstance(client, list) and client else client
    if client:
        job.set(f"{PRE}.weights_client_name", client)


def _cross_site_model_eval(job: _Job, args: dict[str, Any]) -> None:
    job.set(f"{CSV}.enabled", True)
    _copy(job, args, {"submit_model_timeout": f"{CSV}.submit_model_timeout",
                      "validation_timeout": f"{CSV}.validation_timeout",
                      "participating_clients": f"{CSV}.participating_clients"})
    if args.get("submit_model_task_name", "submit_model") == "":
        job.warnings.append("CrossSiteModelEval submit_model_task_name='': fedray evaluates the sites' best local "
                            "models too, beside the server's")
    if args.get("cross_val_dir", "cross_site_val") != "cross_site_val":
        job.warnings.append(f"CrossSiteModelEval cross_val_dir={args['cross_val_dir']}: fedray writes cross_site_val/")
    locator_id = args.get("model_locator_id")
    locator = job.components.get(locator_id) if locator_id else None
    if locator is not None and _class_name(locator) not in COMPONENTS and not _class_path(locator).startswith("nvflare."):
        # The job's own locator (hello-pt's PTModelLocator) names the server models to validate: fedray
        # runs it with the server app's code (fedray/server/flare_components.py).
        job.used.add(locator_id)
        job.set("flare.server_app", str(job.server_app))
        job.set("flare.model_locator", locator_id)
    else:
        job.component(locator_id, "model_locator_id")
    job.component(args.get("formatter_id"), "formatter_id")


def _accumulate_aggregator(job: _Job, args: dict[str, Any]) -> None:
    _aggregation(job, args, "InTimeAccumulateWeightedAggregator")
    if args.get("weigh_by_local_iter") is False:
        job.errors.append("InTimeAccumulateWeightedAggregator weigh_by_local_iter=false: fedray always weighs by "
                          "NUM_STEPS_CURRENT_ROUND")


def _pt_file_model_persistor(job: _Job, args: dict[str, Any]) -> None:
    if args.get("model") is not None:
        _model(job, args["model"], "PTFileModelPersistor model")
    for arg in ("source_ckpt_file_full_name", "filter_id"):
        if args.get(arg) and not (arg == "filter_id" and he_job.is_serializer(job, args[arg], _class_name)):
            job.errors.append(f"PTFileModelPersistor {arg}={args[arg]}: not in fedray yet "
                              "(the job starts from model._target_'s seeded init)")
    for arg, default in (("global_model_file_name", "FL_global_model.pt"),
                         ("best_global_model_file_name", "best_FL_global_model.pt")):
        if args.get(arg, default) != default:
            job.warnings.append(f"PTFileModelPersistor {arg}={args[arg]}: fedray writes models/{default}")
    if args.get("exclude_vars"):
        job.warnings.append(f"PTFileModelPersistor exclude_vars={args['exclude_vars']}: fedray saves every variable")


def _model_selector(job: _Job, args: dict[str, Any]) -> None:
    job.warnings.append(f"IntimeModelSelector key_metric={args.get('key_metric', 'val_acc')}: fedray keeps "
                        "best_FL_global_model.pt by the global model's accuracy on the sites' pooled validation splits")


def _logging(what: str) -> Callable[[_Job, dict[str, Any]], None]:
    def warn(job: _Job, args: dict[str, Any]) -> None:
        job.warnings.append(f"{what}: fedray writes tb/ (TensorBoard) itself; this component is not used")
    return warn


def _mlflow_receiver(job: _Job, args: dict[str, Any]) -> None:
    """FLARE's MLflowReceiver: tracking=mlflow (fedray/records/mlflow_tracker.py); its store, experiment, run name
    and run tags. Without tracking_uri FLARE writes the job's result folder's mlflow.db; fedray's default is
    <working folder>/mlflow.db, shared by runs and sweeps."""
    kw_args = args.get("kw_args") or {}
    _tracker(job, "mlflow", uri=args.get("tracking_uri"), experiment=kw_args.get("experiment_name"),
             run_name=kw_args.get("run_name"), tags=kw_args.get("run_tags"))


def _wandb_receiver(job: _Job, args: dict[str, Any]) -> None:
    """FLARE's WandBReceiver: tracking=wandb (fedray/records/wandb_tracker.py), its mode (FLARE's default offline
    too), project, group and run name."""
    wandb_args = args.get("wandb_args") or {}
    _tracker(job, "wandb", mode=args.get("mode"), experiment=wandb_args.get("project"), group=wandb_args.get("group"),
             run_name=wandb_args.get("name"))


def _tracker(job: _Job, name: str, **keys: Any) -> None:
    """tracking=NAME, and the tracking.* keys the receiver's args gave."""
    job.set("tracking", name)
    for key, value in keys.items():
        if value:
            job.set(f"tracking.{key}", value)


def _plumbing(job: _Job, args: dict[str, Any]) -> None:
    """FLARE's machinery that fedray replaces one for one: nothing to say."""


def _result_filter(name: str) -> Callable[[_Job, dict[str, Any]], None]:
    """ExcludeVars, PercentilePrivacy, SVTPrivacy: in a client's task_result_filters they run in each site
    (_client_filters passes the chain on as it is); as a component anywhere else they are refused."""
    def refuse(job: _Job, args: dict[str, Any]) -> None:
        job.errors.append(f"{name}: a task result filter; fedray runs it in a client app's task_result_filters only")
    return refuse


# FLARE class name (the last part of its path) -> what fedray does with it. Add mappings here.
COMPONENTS: dict[str, Callable[[_Job, dict[str, Any]], None]] = {
    "ScatterAndGather": _scatter_and_gather,
    "FedAvg": _fed_avg,
    "PTFedAvg": _fed_avg,
    "InitializeGlobalWeights": _initialize_global_weights,
    "CrossSiteModelEval": _cross_site_model_eval,
    "InTimeAccumulateWeightedAggregator": _accumulate_aggregator,
    "PTFileModelPersistor": _pt_file_model_persistor,
    "IntimeModelSelector": _model_selector,
    "TBAnalyticsReceiver": _logging("TBAnalyticsReceiver"),
    "MLflowReceiver": _mlflow_receiver,  # tracking=mlflow
    "WandBReceiver": _wandb_receiver,  # tracking=wandb
    "ConvertToFedEvent": _logging("ConvertToFedEvent"),
    "AnalyticsReceiver": _logging("AnalyticsReceiver"),
    "FullModelShareableGenerator": _plumbing,  # fedray's sites exchange whole models
    "PTFileModelLocator": _plumbing,  # cross-site evaluation finds the server's models itself
    "ValidationJsonGenerator": _plumbing,  # fedray writes cross_site_val/cross_val_results.json
    # The algorithms (fedray/algorithms/). FedProx has no server component in FLARE: a Client API
    # script that builds PTFedProxLoss itself runs as it is over FedAvg (the server's part of FedProx
    # is FedAvg's, in FLARE and in fedray); FLARE's FedAvg(fedprox_mu=...) is mapped in _fed_avg.
    "ScatterAndGatherScaffold": _scatter_and_gather_scaffold,
    "Scaffold": _scaffold_controller,
    "PTFedOptModelShareableGenerator": _fedopt_generator,
    "FedOpt": _fedopt_controller,
    # FLARE's privacy filters, in a client's task_result_filters (anywhere else they are refused): run in
    # each site on its train result (fedray/privacy/flare_filters.py).
    **{name: _result_filter(name) for name in flare_filters.ARGS},  # ExcludeVars, PercentilePrivacy, SVTPrivacy
    # FLARE's homomorphic encryption: secure_aggregation=he (fedray/flare/he_job.py; the filters are read there).
    he_job.AGGREGATOR: he_job.aggregator(lambda job, args, owner: _aggregation(job, args, owner)),  # defined below
    he_job.GENERATOR: he_job.part(he_job.GENERATOR),
    he_job.SERIALIZER: he_job.part(he_job.SERIALIZER),
}

# The client's executors that run a Client API script, and the client components that carry its
# messages in FLARE (fedray's site actor does that itself).
SCRIPT_EXECUTORS = {"ClientAPIExecutor", "InProcessClientAPIExecutor", "PTInProcessClientAPIExecutor",
                    "ClientAPILauncherExecutor", "PTClientAPILauncherExecutor"}
# FLARE's own executors that fedray serves inside sites beside a job's own (fedray/flare/learner_api.py).
SERVED_EXECUTORS = {"ModelLearnerExecutor", "LearnerExecutor"}
CLIENT_PLUMBING = {"SubprocessLauncher", "CellPipe", "FilePipe", "MetricRelay", "ExternalConfigurator"}


# ---- reading the folder -------------------------------------------------------------------------


def _apps(folder: Path, meta: dict[str, Any], path: str) -> tuple[str, list[str], list[str]]:
    """The server's app, the clients' apps, and the sites named (none for @ALL)."""
    deploy_map = meta.get("deploy_map") or {"app": [ALL_SITES]}
    server_apps = [app for app, targets in deploy_map.items() if SERVER in targets or ALL_SITES in targets]
    client_apps = [app for app, targets in deploy_map.items() if set(targets) - {SERVER}]
    if len(server_apps) != 1 or not client_apps:
        raise ConfigError(f"flare_job={path}: meta's deploy_map needs one app for the server and one or more for "
                          f"the sites (found {deploy_map})")
    sites = list(dict.fromkeys(t for app in client_apps for t in deploy_map[app] if t not in (SERVER, ALL_SITES)))
    if sites and any(ALL_SITES in deploy_map[app] for app in client_apps):
        sites = []  # @ALL wins: as many sites as the run has
    expected = [f"site-{k}" for k in range(1, len(sites) + 1)]
    if sites and sorted(sites, key=_site_order) != expected:
        raise ConfigError(f"flare_job={path}: deploy_map names sites {', '.join(sites)}; fedray's sites are "
                          f"{', '.join(expected)}: rename them there")
    for app in [*server_apps, *client_apps]:
        if not (folder / app / "config").is_dir():
            raise ConfigError(f"flare_job={path}: app '{app}' of deploy_map has no {app}/config/ folder")
    return server_apps[0], client_apps, sites


def _client_script(job: _Job, folder: Path, client_apps: list[str], path: str) -> Optional[tuple[str, str]]:
    """The one (script, args) every client app runs, or (for an app of custom FLARE executors) its
    folder as `site.flare_app`; its filters and components are checked too."""
    found: dict[tuple[str, str], str] = {}
    executor_apps: list[str] = []
    for app in client_apps:
        client = _vars_substituted(_read_app_config(folder / app, "config_fed_client", path))
        _client_filters(job, client, app)
        if _runs_executors(client):
            executor_apps.append(app)
            _executor_app(job, client, app)
            continue
        script = _script_of(client, folder / app / "custom", app, job)
        for component in client.get("components", []):
            name = _class_name(component)
            if name in COMPONENTS:
                COMPONENTS[name](job, component.get("args", {}))
            elif name not in CLIENT_PLUMBING:
                # A learner (ModelLearnerExecutor's, refused above) is the job's own training code; its
                # FedProx mu is fedray's key for fedray's own training, which is not that code.
                mu = (component.get("args") or {}).get("fedproxloss_mu")
                hint = f" (its fedproxloss_mu={mu} is algorithm=fedprox algorithm.mu={mu} in fedray's own training)"
                job.errors.append(f"{app}: client component {name}: fedray does not know it"
                                  + (hint if mu not in (None, 0, 0.0) else ""))
        if script:
            found.setdefault(script, app)
    _result_filters(job)
    if executor_apps and (found or len(executor_apps) > 1):
        job.errors.append(f"the client apps {', '.join(executor_apps + list(found.values()))} differ: fedray runs "
                          "one client app (one script, or one app's executors) for every site")
    elif executor_apps:
        job.set("site.flare_app", str(folder / executor_apps[0]))
        return None
    if len(found) > 1:
        job.errors.append("the client apps run different scripts (" + "; ".join(
            f"{app}: {script} {args}" for (script, args), app in found.items()) + "): fedray runs one for every site")
    return next(iter(found), None)


def _runs_executors(client: dict[str, Any]) -> bool:
    """Whether a client app's executors are the job's own classes (FLARE's Executor API) or a learner's
    executor fedray serves, not a script's."""
    return any(_class_name(entry.get("executor", {})) in SERVED_EXECUTORS
               or (not _class_path(entry.get("executor", {})).startswith("nvflare.")
                   and _class_name(entry.get("executor", {})) not in SCRIPT_EXECUTORS)
               for entry in client.get("executors", []))


def _executor_app(job: _Job, client: dict[str, Any], app: str) -> None:
    """An app of the job's own executors runs as it is in each site (fedray/site/executor_runner.py); what
    fedray cannot serve beside them is refused here, one line each."""
    for entry in client.get("executors", []):
        executor = entry.get("executor", {})
        served = _class_name(executor) in SERVED_EXECUTORS
        if not served and (_class_path(executor).startswith("nvflare.") or _class_name(executor) in SCRIPT_EXECUTORS):
            job.errors.append(f"{app}: executor {_class_name(executor)} beside the job's own executors: fedray runs "
                              "either a Client API script or the job's Executor classes in a site")
    for component in client.get("components", []):
        name, where = _class_name(component), _class_path(component)
        if where.startswith("nvflare.") and name not in CLIENT_PLUMBING and name not in COMPONENTS:
            job.errors.append(f"{app}: client component {name}: fedray does not serve it inside sites")


def _script_of(client: dict[str, Any], custom: Path, app: str, job: _Job) -> Optional[tuple[str, str]]:
    executors = client.get("executors", [])
    if not executors:
        job.errors.append(f"{app}: config_fed_client has no executors")
        return None
    script_args: Optional[tuple[str, str]] = None
    for entry in executors:
        executor = entry.get("executor", {})
        name, args = _class_name(executor), executor.get("args", {})
        if name not in SCRIPT_EXECUTORS:
            job.errors.append(f"{app}: executor {name}: fedray runs Client API scripts (ClientAPIExecutor) only")
            continue
        job.transfer_types.add(str(args.get("params_transfer_type", "FULL")).upper())
        if args.get("task_script_path"):
            script, line = args["task_script_path"], args.get("task_script_args", "")
        else:
            command = args.get("command") or _launcher_script(client, args)
            if not command:
                job.errors.append(f"{app}: executor {name} names no script (task_script_path or command)")
                continue
            words = shlex.split(command)
            scripts = [k for k, word in enumerate(words) if word.endswith(".py")]
            if not scripts:
                job.errors.append(f"{app}: executor {name}: no .py script in its command '{command}'")
                continue
            script, line = words[scripts[0]], shlex.join(words[scripts[0] + 1:])
        resolved = _in_custom(script, custom)
        if resolved is None:
            job.errors.append(f"{app}: script {script}: not in {custom}")
            continue
        script_args = (str(resolved), line.strip())
    return script_args


def _launcher_script(client: dict[str, Any], args: dict[str, Any]) -> Optional[str]:
    """FLARE 2.4's launcher executors name a SubprocessLauncher component, whose `script` is the command."""
    launcher = args.get("launcher_id", "launcher")
    for component in client.get("components", []):
        if component.get("id") == launcher:
            return component.get("args", {}).get("script")
    return None


def _in_custom(script: str, custom: Path) -> Optional[Path]:
    """`custom/train.py`, `train.py` or FLARE's absolute `/local/custom/train.py`: the file in this app's custom/."""
    relative = Path(script)
    for candidate in (custom / relative, custom.parent / relative, custom / relative.name):
        if candidate.is_file():
            return candidate.resolve()
    return None


def read_app_config(app: Path, stem: str) -> dict[str, Any]:
    """An app's `config/<stem>.json|conf`, FLARE's `{VAR}`s substituted (a site's executors read theirs so)."""
    return _vars_substituted(_read_app_config(Path(app), stem, str(app)))


def _read_app_config(app: Path, stem: str, path: str) -> dict[str, Any]:
    config = _read_config(app / "config", stem)
    if config is None:
        raise ConfigError(f"flare_job={path}: no {stem}.json or {stem}.conf in {app / 'config'}")
    return config


def _read_config(folder: Path, stem: str) -> Optional[dict[str, Any]]:
    """FLARE's JSON, or HOCON (.conf) through pyhocon, as FLARE reads it."""
    if (folder / f"{stem}.json").is_file():
        try:
            return json.loads((folder / f"{stem}.json").read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{folder / stem}.json: not JSON ({err})") from None
    if (folder / f"{stem}.conf").is_file():
        try:
            from pyhocon import ConfigFactory
        except ImportError:
            raise ConfigError(f"{folder / stem}.conf is HOCON: pip install pyhocon") from None
        try:
            return ConfigFactory.parse_file(str(folder / f"{stem}.conf")).as_plain_ordered_dict()
        except Exception as err:  # pyhocon's parse errors have no common base
            raise ConfigError(f"{folder / stem}.conf: not HOCON ({str(err).splitlines()[0]})") from None
    return None


def _vars_substituted(config: dict[str, Any]) -> dict[str, Any]:
    """FLARE's `{name}` in a string value stands for the config's top-level `name` (e.g. `{app_script}`)."""
    variables = {key: value for key, value in config.items() if isinstance(value, (str, int, float))}

    def substitute(value: Any) -> Any:
        if isinstance(value, str):
            whole = re.fullmatch(r"\{(\w+)\}", value)
            if whole and whole.group(1) in variables:
                return variables[whole.group(1)]
            return re.sub(r"\{(\w+)\}", lambda m: str(variables.get(m.group(1), m.group(0))), value)
        if isinstance(value, dict):
            return {key: substitute(item) for key, item in value.items()}
        if isinstance(value, list):
            return [substitute(item) for item in value]
        return value

    return substitute(config)


# ---- small helpers ------------------------------------------------------------------------------


def _translate(job: _Job, entry: dict[str, Any], where: str) -> None:
    name = _class_name(entry)
    handler = COMPONENTS.get(name)
    if handler is None:
        job.errors.append(f"{where}: {entry.get('path') or entry.get('name')}: fedray does not know it "
                          "(it may change the math; map it in fedray/flare/job_folder.py's COMPONENTS)")
        return
    handler(job, entry.get("args", {}))


def _filters(job: _Job, config: dict[str, Any], where: str) -> None:
    """The server's filters rewrite what it sends and receives: fedray has none of them."""
    for key in ("task_data_filters", "task_result_filters"):
        for entry in config.get(key) or []:
            names = [_class_name(f) for f in entry.get("filters", [])] or [_class_name(entry)]
            job.errors.append(f"{where} {key}: {', '.join(names)}: filters are not in fedray yet")


def _client_filters(job: _Job, client: dict[str, Any], app: str) -> None:
    """A client app's filters: its task_result_filters of FLARE's privacy filters run in each site
    (flare.task_result_filters, fedray/privacy/flare_filters.py); any other filter, and every
    task_data_filter, is refused."""
    where = f"{app}'s config_fed_client"
    client = he_job.client_without_he(job, client, app, _class_name)  # HE's filters: secure_aggregation=he
    for entry in client.get("task_data_filters") or []:
        names = [_class_name(f) for f in entry.get("filters", [])] or [_class_name(entry)]
        job.errors.append(f"{where} task_data_filters: {', '.join(names)}: filters are not in fedray yet")
    chains = client.get("task_result_filters") or []
    job.errors += [f"{where} task_result_filters{'' if line.startswith('[') else ': '}{line}"
                   for line in flare_filters.problems(chains)]
    job.result_filters[app] = chains


def _result_filters(job: _Job) -> None:
    """The client apps' result filters as one chain for every site (fedray runs one client app's code in
    every site), and the executors' params_transfer_type, which decides what a script's answer is when
    the filters see it (FLARE's Client API sends DIFF as local minus global)."""
    chains = list(job.result_filters.values())
    if any(chain != chains[0] for chain in chains):
        job.errors.append(f"the client apps {', '.join(job.result_filters)} have different task_result_filters: "
                          "fedray runs one chain in every site")
    elif chains and chains[0]:
        job.set("flare.task_result_filters", chains[0])
        if "DIFF" in job.transfer_types:
            job.set("flare.params_transfer_type", "DIFF")


def _class_name(entry: dict[str, Any]) -> str:
    return _class_path(entry).rsplit(".", 1)[-1]


def _class_path(entry: dict[str, Any]) -> str:
    return str(entry.get("path") or entry.get("name") or "")


def _copy(job: _Job, args: dict[str, Any], keys: dict[str, str]) -> None:
    for arg, key in keys.items():
        if arg in args:
            job.set(key, args[arg])


def _aggregation(job: _Job, args: dict[str, Any], owner: str) -> None:
    excluded = args.get("exclude_vars")
    if isinstance(excluded, dict):
        job.errors.append(f"{owner} exclude_vars per data kind ({excluded}): give fedray one regex")
    elif isinstance(excluded, list):
        job.set(f"{SAG}.exclude_vars", "|".join(f"^{re.escape(name)}$" for name in excluded))
    elif excluded:
        job.set(f"{SAG}.exclude_vars", excluded)
    for site, weight in (args.get("aggregation_weights") or {}).items():
        if isinstance(weight, dict):
            job.errors.append(f"{owner} aggregation_weights per data kind ({site}: {weight}): fedray takes a number")
        else:
            job.set(f"+{SAG}.aggregation_weights.{site}", weight)


def _model(job: _Job, model: Any, where: str) -> None:
    """FLARE's `model`: a class path, or {path, args}; the module lies in custom/ (python_path)."""
    if isinstance(model, str) and model in job.components:  # the id of a model component
        job.used.add(model)
        model = job.components[model]
    target, args = (model, {}) if isinstance(model, str) else (model.get("path") or model.get("class_path"),
                                                               model.get("args") or {})
    if not target:
        job.errors.append(f"{where}: no class path")
        return
    job.set("model._target_", target)
    for name, value in args.items():
        job.set(f"+model.{name}", value)


def _override(key: str, value: Any) -> str:
    return key if key.startswith("~") else f"{key}={_value(value)}"


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{_value(item)}" for key, item in value.items()) + "}"
    # Hydra's quoted strings: a quote is escaped, and so are the backslashes just before one (or the end).
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", str(value))
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return f"'{text}'"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _site_order(site: str) -> tuple[int, str]:
    number = site.rsplit("-", 1)[-1]
    return (int(number), site) if number.isdigit() else (sys.maxsize, site)
