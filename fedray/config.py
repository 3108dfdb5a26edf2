"""The job schema, its composition from conf/, and `validate`: the checks that need neither torch nor Ray.

Hydra composes `conf/` on top of the typed schema below, so unknown keys and
wrong types are rejected by OmegaConf itself; `validate` adds the range and
cross-key rules. Every failure becomes a `ConfigError` with one line that names
the key and the fix. What needs the code itself (the `_target_`s import, the model takes a batch)
is checked by `fedray.driver.preflight`, which imports torch.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedray import dataset_catalog as catalog
from fedray.privacy import flare_filters
from fedray.python_path import put_on_python_path

# `${fedray.mul:${rounds},${local_epochs}}`: a product in a config (the cosine schedule's length).
OmegaConf.register_new_resolver("fedray.mul", lambda *factors: math.prod(factors), replace=True)


class ConfigError(ValueError):
    """A job config that cannot run; the message is one line naming the key."""


def _conf_dir() -> str:
    """The built-in configs: fedray/conf in an installed wheel, the repository's conf/ in a clone."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise ConfigError(f"fedray's configs are missing: neither {here / 'conf'} nor {here.parent / 'conf'} exists; "
                      "reinstall fedray")


CONF_DIR = _conf_dir()


@dataclass
class DataConfig:
    name: str = "cifar10"  # cifar10 | synthetic
    root: Optional[str] = None  # null: ~/.cache/fedray/cifar10 (or $XDG_CACHE_HOME)
    download: bool = True
    check_integrity: bool = True
    val_fraction: float = 0.1
    num_train: Optional[int] = None  # synthetic: its size; cifar10: a seeded subsample
    num_test: Optional[int] = None
    seed: int = 0  # the data's own seed, so that changing `seed` keeps the dataset
    # What the dataset gives the model (conf/data/ sets them; fedray/dataset_catalog.py): the checks, the sites and
    # the stand-in follow them.
    task: str = "image_classification"  # image_classification | next_token
    input_shape: List[int] = field(default_factory=lambda: [3, 32, 32])  # [C, H, W] images; [L] token windows
    num_classes: Optional[int] = 10  # null: the dataset's own count (an EMNIST split's, an image folder's)
    format: Optional[str] = None  # femnist: leaf | tff | parquet; huggingface: parquet | csv | imagefolder
    split: Optional[str] = None  # emnist: byclass | bymerge | balanced | letters | digits | mnist
    train_files: Optional[str] = None  # huggingface (and femnist's parquet): a glob under root
    test_files: Optional[str] = None  # null: a seeded tenth of each natural id's samples is the test set
    input_column: Optional[str] = None
    label_column: Optional[str] = None
    id_column: Optional[str] = None  # the natural id (writer, speaker) for partition=natural
    num_writers: Optional[int] = None  # synthetic: samples spread over writers as LEAF's FEMNIST's


@dataclass
class PartitionConfig:
    name: str = "iid"  # README "Partitions": iid, dirichlet, inner_dirichlet, natural, shard, pathological, linear ...
    alpha: float = 0.5
    min_samples: int = 10  # dirichlet redraws until every site has this many
    shards_per_site: int = 2  # shard: label-sorted shards of N/(num_clients x this) per site (McMahan et al.: 2)
    classes_per_site: int = 2  # pathological: classes per site
    class_assignment: str = "first-deterministic"  # pathological: first-deterministic | random | deterministic
    sizes: str = "equal"  # inner_dirichlet: the sites' sizes, equal | linear | square | exponential


@dataclass
class SiteConfig:
    num_actors: Optional[int] = None  # site actors; null: one per site on GPU, one per core on CPU
    num_gpus: Optional[float] = None  # per actor; null: cluster GPUs / num_actors
    num_cpus: Optional[float] = None  # per actor, for Ray's scheduler; null: num_threads
    num_threads: Optional[int] = None  # torch threads per actor; null: 1 on CPU, CPUs / actors on GPU
    start_timeout: float = 180.0  # seconds for every site actor to be up
    script: Optional[str] = None  # a Client API training script run in each site (one actor per site)
    script_args: str = ""  # its command line, e.g. "--batch_size 16"
    flare_app: Optional[str] = None  # a FLARE client app folder whose own Executor classes each site runs (flare_job= sets it)
    max_restarts: int = 2  # times Ray restarts a site actor that died or hung, before the site is given up
    max_task_retries: int = 2  # times a task whose worker process died runs again, before it is the site's failure
    stop_timeout: float = 10.0  # seconds a task given up on has to stop before its actor is restarted
    sites_per_task: Optional[int] = None  # sites a pool worker trains per task; null: auto (see controller)
    batched_training: bool = False  # a task's sites trained at once (torch.func.vmap, fedray/site/batched_training.py)


@dataclass
class RayConfig:
    address: Optional[str] = None  # null: $RAY_ADDRESS if set, else a private local Ray
    num_cpus: Optional[int] = None  # local Ray only
    num_gpus: Optional[int] = None  # local Ray only
    dashboard: bool = False
    share: float = 1.0  # the part of the cluster's CPUs and GPUs its site actors plan on; hydra/launcher=fedray_ray: 1/concurrency


@dataclass
class FlareConfig:
    """What a FLARE job folder's server app adds (flare_job= sets it): its own components that act on
    events, and its own ModelLocator."""

    server_app: Optional[str] = None  # the server app folder (config/config_fed_server.json, custom/)
    server_components: List[str] = field(default_factory=list)  # ids of its components run on START_RUN/END_RUN
    model_locator: Optional[str] = None  # id of its own ModelLocator: cross-site evaluation validates the models it finds
    # A FLARE client's task_result_filters: [{tasks: [train], filters: [{path: ...PercentilePrivacy, args: {...}}]}],
    # run on each site's train result before it leaves the site (fedray/privacy/flare_filters.py).
    task_result_filters: List[Any] = field(default_factory=list)
    params_transfer_type: str = "FULL"  # a Client API executor's: DIFF sends a script's FULL answer as a difference


@dataclass
class TensorBoardConfig:
    per_site: Optional[bool] = None  # tb/site-k/ curves (streamed train loss, round metrics); null: up to PER_SITE_LIMIT sites


@dataclass
class TrackingConfig:
    """An experiment tracker beside tb/ (conf/tracking/, README "Tracking"): the driver logs each round's metrics,
    the config as params and the run's files as artifacts (fedray/records/tracking.py)."""

    name: str = "none"  # none | mlflow | wandb
    uri: Optional[str] = None  # mlflow: the tracking URI; null: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "fedray"  # the MLflow experiment, the W&B project
    run_name: Optional[str] = None  # null: the run folder's path
    group: Optional[str] = None  # a sweep's jobs: the MLflow parent run / W&B group; null: the sweep folder, in a sweep
    mode: str = "offline"  # wandb: offline (files under the run folder's wandb/) | online | disabled
    tags: Dict[str, str] = field(default_factory=dict)  # the run's tags


@dataclass
class PrivacyConfig:
    """Differential privacy (conf/privacy/, README "Privacy"): none, central DP-FedAvg, local DP, or DP-SGD
    inside sites. One schema for every mode, so a key means the same in each."""

    mode: str = "none"  # none | central | local | dp_sgd
    # L2 bound: of a site's update (central, local) or of a sample's gradient (dp_sgd); central: or "adaptive"
    clip: Any = 1.0
    noise_multiplier: Optional[float] = 1.0  # noise std / clip; null with target_epsilon: calibrated before Ray starts
    delta: Optional[float] = None  # the delta epsilon is reported at; null: 1/num_clients
    target_epsilon: Optional[float] = None  # calibrates a null noise_multiplier; the run stops at the last round within it
    accountant: str = "rdp"  # rdp | pld (dp-accounting's)
    # clip=adaptive (Andrew et al. 2021; Flower's defaults): the clip norm follows the target quantile of the update norms
    initial_clip: float = 0.1
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_noise: Optional[float] = None  # std of the noise on the count of unclipped updates; null: expected cohort / 20
    epsilon: Optional[float] = None  # local: the epsilon of each site's release (at delta)


@dataclass
class SystemConfig:
    """The sites' speeds, links and availability on a simulated clock (conf/system/, README "Time and
    heterogeneity"; fedray/system/). uniform: no simulated time passes, as before."""

    name: str = "uniform"  # uniform | lognormal | trace
    # lognormal: each site's value is median x exp(spread x z), z drawn once per site from (seed, site index)
    seconds_per_sample: float = 0.005  # a training sample's compute (FedScale's mean_seconds_per_sample)
    compute_spread: float = 0.6  # FedScale's tail_skew
    download_bytes_per_s: float = 2.5e6
    upload_bytes_per_s: float = 1.0e6
    bandwidth_spread: float = 0.8
    latency_s: float = 0.05
    latency_spread: float = 0.5
    dropout: float = 0.0  # lognormal, trace: the probability that a task is lost, drawn per (seed, round, site)
    device_capacity: Optional[str] = None  # trace: FedScale's pickle {client: {computation: ms/sample, communication: kbit/s}}
    availability: Optional[str] = None  # FedScale's pickle {client: {active, inactive, finish_time}}; null: always online


@dataclass
class SecureAggregationConfig:
    """Secure aggregation (conf/secure_aggregation/, README "Secure aggregation"): none, or a protocol under which
    the controller never holds a site's plain update. Each protocol adds its own keys below its own comment."""

    mode: str = "none"  # none | secagg_plus | he
    # secagg_plus: SecAgg+ (Bell et al. 2020; fedray/secure/); each site's update clipped, quantized and masked
    num_shares: Optional[int] = None  # a site's neighbourhood, itself included (odd); null: 2 ceil(log2 cohort) + 1, all up to 7
    threshold: Any = 0.5  # shares that recover a site's secret: a count, or a fraction of num_shares (rounded up; at least 2)
    clipping_range: float = 1.0  # each coordinate of a site's update clipped to [-c, c] before quantizing
    quantization_bits: int = 16  # updates quantized into [0, 2^bits); the mean is within 2c/(2^bits - 1) of FedAvg's
    modulus_bits: int = 32  # masks and sums modulo 2^modulus_bits; cohort x (2^quantization_bits - 1) must be below it
    dropout: float = 0.0  # the probability that a site drops out (at dropout_at), drawn per (seed, round, site)
    dropout_at: str = "before_masking"  # before_masking (shared keys, sent no vector) | after_masking (no unmasking answer)
    # he: FLARE's homomorphic encryption (fedray/secure/he.py, README "Homomorphic encryption"), CKKS as its
    # HEBuilder provisions it; fraction_bits: the fixed-point grid 2^-k the sites encrypt on (exact, reproducible sums)
    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: List[int] = field(default_factory=lambda: [60, 40, 40])
    scale_bits: int = 40
    fraction_bits: int = 24


@dataclass
class PreTrainConfig:
    enabled: bool = True
    task_name: str = "get_weights"
    weight_method: str = "first"  # first | client
    weights_client_name: Optional[str] = None
    timeout: float = 600.0  # seconds; 0: no limit


@dataclass
class ScatterAndGatherConfig:
    enabled: bool = True
    min_clients: Optional[int] = None  # null: all sites sent the task
    clients_per_round: Optional[int] = None  # sites sampled (seeded) each round; null: all
    sampling: str = "fixed"  # fixed: clients_per_round sites without replacement | poisson: each site with p = clients_per_round/num_clients
    num_rounds: int = 5
    start_round: int = 0
    wait_time_after_min_received: float = 0.0
    train_timeout: float = 3600.0  # seconds per train task; 0: no limit
    aggregation_weights: Dict[str, float] = field(default_factory=dict)
    exclude_vars: Optional[str] = None  # regex of variables kept at their global values
    ignore_result_error: Optional[bool] = None  # FLARE's: null ignores failures while min_clients can answer
    # Asynchronous FedBuff (README "Asynchronous aggregation"): num_rounds counts aggregations
    mode: str = "sync"  # sync | fedbuff
    concurrency: Optional[int] = None  # fedbuff: sites training at once; null: clients_per_round (or all sites)
    buffer_size: Optional[int] = None  # fedbuff: arrivals per aggregation (1: FedAsync); null: concurrency
    staleness: str = "constant"  # fedbuff: constant | polynomial 1/(1+s)^a | threshold 1 if s<=b else a | hinge 1 if s<=b else 1/(a(s-b)+1)
    staleness_a: float = 0.5
    staleness_b: float = 4.0
    server_lr: float = 1.0  # fedbuff: the step along the buffer's staleness-weighted mean update
    round_deadline: Optional[float] = None  # simulated seconds; a site that would finish later is late (never trains)
    over_selection: float = 1.0  # sample ceil(f x clients_per_round) sites, aggregate the first clients_per_round to finish


@dataclass
class CrossSiteValidateConfig:
    enabled: bool = True
    max_participants: int = 32  # with more sites and no participating_clients, a seeded sample this size
    submit_model_timeout: float = 600.0  # FLARE's default; 0: no limit
    validation_timeout: float = 6000.0  # FLARE's default
    participating_clients: Optional[List[str]] = None  # null: all sites


@dataclass
class WorkflowsConfig:
    pre_train: PreTrainConfig = field(default_factory=PreTrainConfig)
    scatter_and_gather: ScatterAndGatherConfig = field(default_factory=ScatterAndGatherConfig)
    cross_site_validate: CrossSiteValidateConfig = field(default_factory=CrossSiteValidateConfig)


@dataclass
class JobConfig:
    num_clients: int = 8
    rounds: int = 5
    min_clients: Optional[int] = None
    clients_per_round: Optional[int] = None
    sampling: str = "fixed"  # fixed | poisson (workflows.scatter_and_gather.sampling)
    seed: int = 0
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    eval_batch_size: int = 1000
    eval_every: int = 1
    resume: Optional[str] = None  # a stopped run's dir: continue it from its last finished round
    job_timeout: float = 0.0  # seconds for the whole job, then it stops (finished rounds kept); 0: no limit
    python_path: List[str] = field(default_factory=list)  # folders importable in the driver and every site
    model: Any = None
    aggregator: Any = None
    algorithm: Any = None  # conf/algorithm/: fedavg, fedprox, fedopt, scaffold
    optimizer: Any = None  # conf/optimizer/: each site's local optimizer
    lr_scheduler: Any = None  # conf/lr_scheduler/: null, or stepped once per local epoch
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)  # conf/privacy/: none, central, local (dp_sgd)
    system: SystemConfig = field(default_factory=SystemConfig)  # conf/system/: uniform, lognormal, trace
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)  # conf/secure_aggregation/
    flare: FlareConfig = field(default_factory=FlareConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # conf/tracking/: none, mlflow, wandb
    workflows: WorkflowsConfig = field(default_factory=WorkflowsConfig)


ConfigStore.instance().store(name="fedray_schema", node=JobConfig)

_CHOICES = {
    "data.name": catalog.NAMES,
    "data.task": catalog.TASKS,
    "partition.name": ("iid", "dirichlet", "inner_dirichlet", "natural", "shard", "pathological", "linear", "square",
                       "exponential"),
    "partition.class_assignment": ("first-deterministic", "random", "deterministic"),
    "partition.sizes": ("equal", "linear", "square", "exponential"),
    "workflows.pre_train.weight_method": ("first", "client"),
    "workflows.scatter_and_gather.sampling": ("fixed", "poisson"),
    "workflows.scatter_and_gather.mode": ("sync", "fedbuff"),
    "workflows.scatter_and_gather.staleness": ("constant", "polynomial", "threshold", "hinge"),
    "privacy.mode": ("none", "central", "local", "dp_sgd"),
    "privacy.accountant": ("rdp", "pld"),
    "system.name": ("uniform", "lognormal", "trace"),
    "secure_aggregation.mode": ("none", "secagg_plus", "he"),
    "secure_aggregation.dropout_at": ("before_masking", "after_masking"),
    "flare.params_transfer_type": ("FULL", "DIFF"),
    "tracking.name": ("none", "mlflow", "wandb"),
    "tracking.mode": ("offline", "online", "disabled"),
}

# What a DP config needs installed, and the line that says how to get it.
PRIVACY_EXTRA = "pip install fedray[privacy]"


def compose(overrides: list[str] | tuple[str, ...] = (), config_dirs: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose `conf/config.yaml` with command-line style overrides, then `validate`: what
    `python -m fedray.run` checks before Hydra starts a job. No torch, no Ray: what the code says
    (the `_target_`s import, the model runs) is `fedray.driver.preflight`'s to check.

    `config_dirs` are the users' own config folders (`--config-dir`), searched after the built-in
    ones as Hydra's `--config-dir` is.
    """
    search = [f"hydra.searchpath=[{','.join(_file_url(d) for d in config_dirs)}]"] if config_dirs else []
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None, job_name="fedray"):
            cfg = hydra_compose(config_name="config", overrides=search + list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_one_line(err, list(overrides))) from None
    validate(cfg)
    return cfg


def _file_url(folder: str) -> str:
    path = Path(folder).resolve()
    if not path.is_dir():
        raise ConfigError(f"--config-dir {folder}: no such folder")
    return f"file://{path}"


def with_new_keys(saved: Any) -> DictConfig:
    """A saved run's config (resume=RUN_DIR) with the keys added to the schema since it was written at their
    defaults, so that code reading them needs no case for old runs."""
    defaults = OmegaConf.to_container(OmegaConf.structured(JobConfig))
    return OmegaConf.merge(OmegaConf.create(defaults), saved)


def server_code_ids(flare: Any) -> list[str]:
    """The ids of a FLARE server app's own components fedray runs (`flare.server_components`, then its
    ModelLocator): none, or the server components' actor's (fedray/server/flare_components.py)."""
    return [*flare["server_components"], *([flare["model_locator"]] if flare["model_locator"] else [])]


def site_names(num_clients: int) -> list[str]:
    return [f"site-{k}" for k in range(1, num_clients + 1)]


# Sites up to which a run has per-site TensorBoard curves by default. Beyond, a chart of hundreds of
# lines says nothing, each site's folder costs the driver a file per write, and streaming a 5-step
# site's loss costs more than training it; the round's sites are then summed up in tb/ instead.
PER_SITE_LIMIT = 64


def runs_own_code(site: Any) -> bool:
    """Whether the sites run the job's own code (a Client API script, or a FLARE app's executors): one
    actor per site, which keeps that code's state for the whole run."""
    return bool(site.get("script") or site.get("flare_app"))


def per_site_curves(job: Any) -> bool:
    """Whether sites stream their training curves and get tb/site-k/ (`tensorboard.per_site`); by
    default with a Client API script too, whose own metrics are the point of its curves."""
    chosen = (job.get("tensorboard") or {}).get("per_site")
    if chosen is not None:
        return bool(chosen)
    return job["num_clients"] <= PER_SITE_LIMIT or runs_own_code(job["site"])


def validate(cfg: DictConfig) -> None:
    """Range and cross-key checks that the typed schema cannot express."""
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err, [])) from None

    def require(ok: bool, key: str, rule: str) -> None:
        if not ok:
            value = OmegaConf.select(cfg, key, default=None)
            raise ConfigError(f"{key}={_show(value)}: {rule}")

    require(cfg.num_clients >= 1, "num_clients", "must be at least 1")
    require(cfg.rounds >= 1, "rounds", "must be at least 1")
    require(cfg.local_epochs >= 1, "local_epochs", "must be at least 1")
    require(cfg.batch_size >= 1, "batch_size", "must be at least 1")
    require(cfg.eval_batch_size >= 1, "eval_batch_size", "must be at least 1")
    require(cfg.eval_every >= 1, "eval_every", "must be at least 1 (rounds between global evaluations)")
    require(cfg.lr > 0, "lr", "must be positive")
    require(0 <= cfg.momentum < 1, "momentum", "must be in [0, 1)")
    if cfg.min_clients is not None:
        require(
            1 <= cfg.min_clients <= cfg.num_clients,
            "min_clients",
            f"must be between 1 and num_clients={cfg.num_clients} (or null for all sites)",
        )
    for key, choices in _CHOICES.items():
        require(OmegaConf.select(cfg, key) in choices, key, f"must be one of {', '.join(choices)}")

    require(0 <= cfg.data.val_fraction < 1, "data.val_fraction", "must be in [0, 1)")
    for key in ("data.num_train", "data.num_test"):
        value = OmegaConf.select(cfg, key)
        require(value is None or value >= 1, key, "must be at least 1 (or null for all)")
    _validate_data(cfg, require)
    require(cfg.partition.alpha > 0, "partition.alpha", "must be positive, e.g. partition.alpha=0.5")
    require(cfg.partition.min_samples >= 1, "partition.min_samples", "must be at least 1")
    _validate_partition(cfg, require)

    for key in ("num_gpus", "num_cpus"):
        value = cfg.site[key]
        require(value is None or value >= 0, f"site.{key}", "must be >= 0 (or null for automatic)")
    for key in ("num_actors", "num_threads"):
        value = cfg.site[key]
        require(value is None or value >= 1, f"site.{key}", "must be at least 1 (or null for automatic)")
    require(cfg.site.start_timeout > 0, "site.start_timeout", "must be positive (seconds)")
    require(cfg.site.max_restarts >= 0, "site.max_restarts", "must be >= 0")
    require(cfg.site.max_task_retries >= 0, "site.max_task_retries", "must be >= 0")
    require(cfg.site.stop_timeout > 0, "site.stop_timeout", "must be positive (seconds)")
    if cfg.site.sites_per_task is not None:
        require(cfg.site.sites_per_task >= 1, "site.sites_per_task", "must be at least 1 (or null for automatic)")
        require(
            cfg.site.sites_per_task == 1 or not cfg.workflows.cross_site_validate.enabled,
            "site.sites_per_task",
            "must be 1 (or null) with cross-site evaluation, which needs each site's own model; "
            "or set workflows.cross_site_validate.enabled=false",
        )
    require(0 < cfg.ray.share <= 1, "ray.share", "must be in (0, 1]: the part of the cluster this job plans on")
    require(cfg.job_timeout >= 0, "job_timeout", "must be >= 0 seconds (0: no limit)")
    if cfg.site.num_actors is not None:
        require(cfg.site.num_actors <= cfg.num_clients, "site.num_actors", f"must be at most num_clients={cfg.num_clients}")
    if cfg.site.script is not None:
        require(Path(cfg.site.script).is_file(), "site.script", "no such file; give the path of your training script")
        _require_compiles(cfg.site.script)
    if cfg.site.flare_app is not None:
        require(cfg.site.script is None, "site.flare_app", "a site runs a script or a FLARE app's executors, not both; "
                "set site.script=null")
        app = Path(cfg.site.flare_app)
        require(any((app / "config" / f"config_fed_client.{ext}").is_file() for ext in ("json", "conf")),
                "site.flare_app", "no config/config_fed_client.json (or .conf) there; give a FLARE client app folder")
    if server_code_ids(cfg.flare):
        require(cfg.flare.server_app is not None and Path(cfg.flare.server_app).is_dir(), "flare.server_app",
                "must be the FLARE server app folder whose components flare.server_components and "
                "flare.model_locator name")
    filters = OmegaConf.to_container(cfg.flare.task_result_filters)
    for problem in flare_filters.problems(filters)[:1]:
        raise ConfigError(f"flare.task_result_filters{'' if problem.startswith('[') else ': '}{problem}")
    if runs_own_code(cfg.site):
        require(
            cfg.site.num_actors in (None, cfg.num_clients),
            "site.num_actors",
            "must be null (or num_clients) with site.script or site.flare_app: each site's code runs in its own actor",
        )

    sites = site_names(cfg.num_clients)
    pre = cfg.workflows.pre_train
    if pre.enabled and pre.weight_method == "client":
        require(
            pre.weights_client_name in sites,
            "workflows.pre_train.weights_client_name",
            f"must name a site (site-1 ... site-{cfg.num_clients}) when weight_method=client",
        )
    require(pre.timeout >= 0, "workflows.pre_train.timeout", "must be >= 0 (0: no limit)")

    sag = cfg.workflows.scatter_and_gather
    require(sag.num_rounds >= 1, "workflows.scatter_and_gather.num_rounds", "must be at least 1")
    require(
        0 <= sag.start_round < sag.num_rounds,
        "workflows.scatter_and_gather.start_round",
        f"must be in [0, num_rounds={sag.num_rounds})",
    )
    per_round = cfg.num_clients if sag.clients_per_round is None else sag.clients_per_round
    require(
        1 <= per_round <= cfg.num_clients,
        "clients_per_round",
        f"must be between 1 and num_clients={cfg.num_clients} (or null for all sites)",
    )
    if sag.min_clients is not None:
        require(
            1 <= sag.min_clients <= per_round,
            "min_clients",
            f"must be between 1 and the sites sent the task each round ({per_round})",
        )
    for key in ("wait_time_after_min_received", "train_timeout"):
        require(sag[key] >= 0, f"workflows.scatter_and_gather.{key}", "must be >= 0 seconds")
    for site, weight in sag.aggregation_weights.items():
        key = f"workflows.scatter_and_gather.aggregation_weights.{site}"
        require(site in sites, key, f"names no site; sites are site-1 ... site-{cfg.num_clients}")
        require(weight >= 0, key, "must be >= 0")
    if sag.exclude_vars is not None:
        try:
            re.compile(sag.exclude_vars)
        except re.error as err:
            raise ConfigError(
                f"workflows.scatter_and_gather.exclude_vars={sag.exclude_vars!r}: not a regular expression ({err})"
            ) from None

    csv = cfg.workflows.cross_site_validate
    require(
        not csv.enabled or cfg.data.val_fraction > 0,
        "workflows.cross_site_validate.enabled",
        "needs each site's validation split; set data.val_fraction > 0 or workflows.cross_site_validate.enabled=false",
    )
    require(csv.max_participants >= 1, "workflows.cross_site_validate.max_participants", "must be at least 1")
    for key in ("submit_model_timeout", "validation_timeout"):
        require(csv[key] >= 0, f"workflows.cross_site_validate.{key}", "must be >= 0 seconds (0: no limit)")
    if csv.participating_clients is not None:
        unknown = [site for site in csv.participating_clients if site not in sites]
        require(
            not unknown and len(csv.participating_clients) > 0,
            "workflows.cross_site_validate.participating_clients",
            f"must list sites among site-1 ... site-{cfg.num_clients} (unknown: {', '.join(unknown) or 'none'})",
        )

    for folder in cfg.python_path:
        require(Path(folder).is_dir(), "python_path", f"{folder}: no such folder")
    put_on_python_path(OmegaConf.to_container(cfg), cfg.site.script)  # a model beside the script, in custom/
    _validate_algorithm(cfg, require)
    _validate_he(cfg, require)  # before privacy's: its ledger takes seconds, and HE refuses central DP anyway
    _validate_privacy(cfg, require)
    _validate_fedbuff(cfg, require)
    _validate_system(cfg, require)
    _validate_secagg(cfg, require)
    _validate_tracking(cfg)


def _validate_secagg(cfg: DictConfig, require: Callable[[bool, str, str], None]) -> None:
    """secure_aggregation=secagg_plus's keys and what it composes with (README "Secure aggregation")."""
    group, sag, key = cfg.secure_aggregation, cfg.workflows.scatter_and_gather, "secure_aggregation."
    if group.mode != "secagg_plus":
        return
    try:
        import cryptography  # noqa: F401  (X25519, HKDF, AES-GCM)
    except ImportError:
        raise ConfigError("secure_aggregation.mode=secagg_plus: needs cryptography, which is not installed; "
                          "pip install 'fedray[secagg]'") from None
    from fedray.secure.masking import share_count

    per_round = sag.clients_per_round or cfg.num_clients
    # The most sites one round's sum can hold: Poisson and over-selection draw more than clients_per_round.
    cohort = cfg.num_clients if sag.sampling == "poisson" else min(cfg.num_clients, math.ceil(sag.over_selection * per_round))
    require(per_round >= 2, "clients_per_round", "must be at least 2 with secure_aggregation=secagg_plus: the sum of "
            "one site is its update")
    if group.num_shares is not None:
        require(group.num_shares >= 2, key + "num_shares", "must be at least 2 (or null: from the cohort)")
    threshold = group.threshold
    require(_is_number(threshold) and threshold > 0 and (isinstance(threshold, int) or threshold <= 1), key + "threshold",
            "must be a count of shares (an integer) or a fraction of num_shares in (0, 1]")
    shares = share_count(per_round, group.num_shares)
    require(isinstance(threshold, float) or threshold <= shares, key + "threshold",
            f"is above the {shares} shares of each site's secret (num_shares, at most the cohort of {per_round}); "
            "lower it or use a fraction")
    require(group.clipping_range > 0, key + "clipping_range", "must be positive (updates are clipped to [-c, c])")
    require(1 <= group.quantization_bits < group.modulus_bits <= 64, key + "quantization_bits",
            f"must be at least 1 and below modulus_bits={group.modulus_bits} (at most 64)")
    require(cohort * (2**group.quantization_bits - 1) < 2**group.modulus_bits, key + "modulus_bits",
            f"too few bits for the cohort: {cohort} sites x (2^{group.quantization_bits} - 1) overflows the modular "
            f"sum; raise modulus_bits to {math.ceil(math.log2(cohort * (2**group.quantization_bits - 1) + 1))} or "
            "lower quantization_bits")
    require(0 <= group.dropout < 1, key + "dropout", "must be in [0, 1): the probability that a site drops out")
    require(sag.mode == "sync", "workflows.scatter_and_gather.mode", "must be sync with secure_aggregation=secagg_plus: "
            "fedbuff aggregates a few arrivals at a time, whose masks would not cancel")
    require(not cfg.algorithm._target_.endswith("Scaffold"), "algorithm._target_", "scaffold's control variates would reach the "
            "controller unmasked; with secure_aggregation=secagg_plus use algorithm=fedavg, fedprox or fedopt")
    require(cfg.aggregator._target_ == "fedray.aggregation.fedavg", "aggregator._target_",
            "must be fedray.aggregation.fedavg with secagg_plus: the controller only gets the sum of the updates")
    require(not sag.aggregation_weights, "workflows.scatter_and_gather.aggregation_weights",
            "must be empty with secagg_plus: each site's update counts once in the masked sum")
    require(not cfg.workflows.cross_site_validate.enabled, "workflows.cross_site_validate.enabled",
            "must be false with secagg_plus: cross-site evaluation sends each site's own model to the server")
    require(not runs_own_code(cfg.site) and not cfg.site.batched_training, "secure_aggregation.mode",
            "secagg_plus masks fedray's own sites' updates: not with site.script, site.flare_app or site.batched_training")


_SIZE_SKEW = {"linear": lambda k, n: k, "square": lambda k, n: k * k, "exponential": lambda k, n: math.exp(k - n)}


def _validate_partition(cfg: DictConfig, require: Callable[[bool, str, str], None]) -> None:
    """The partition's own keys, and what the data's size (data.num_train, where given) already rules out; the
    rest (too few ids, classes or samples in the data read) is partition()'s line, once the data is read."""
    part, num_train = cfg.partition, cfg.data.num_train
    require(part.shards_per_site >= 1, "partition.shards_per_site", "must be at least 1 (McMahan et al.'s: 2)")
    require(part.classes_per_site >= 1, "partition.classes_per_site", "must be at least 1")
    if part.name == "natural":
        require(catalog.has_natural_id(cfg.data), "data.name", f"{cfg.data.name} has no natural id (a writer, a "
                "speaking role) for partition=natural; choose a dataset with one (femnist, shakespeare, synthetic with "
                "data.num_writers, huggingface with data.id_column) or another partition (iid, dirichlet, shard, pathological)")
    if part.name == "shard" and num_train is not None:
        needed = cfg.num_clients * part.shards_per_site
        require(needed <= num_train, "partition.shards_per_site", f"{part.shards_per_site} x num_clients="
                f"{cfg.num_clients} shards need at least {needed} training samples, data.num_train={num_train}; "
                "lower partition.shards_per_site or num_clients")
    key, skew = ("partition.sizes", part.sizes) if part.name == "inner_dirichlet" else ("partition.name", part.name)
    if skew in _SIZE_SKEW and num_train is not None:
        # Site 1's share f(1) / sum_k f(k), as fedray/data/partitioners.py floors it (which the controller's
        # contract keeps config from importing: fedray.data is the driver's).
        units = [_SIZE_SKEW[skew](k, cfg.num_clients) for k in range(1, cfg.num_clients + 1)]
        smallest = int(units[0] / sum(units) * num_train)
        require(smallest >= 1, key, f"num_clients={cfg.num_clients} sites leave site-1 {smallest} of "
                f"data.num_train={num_train} samples; lower num_clients or choose a milder skew "
                "(linear < square < exponential)")



# What each tracker needs installed (the modules its code imports), and the extra that installs them.
TRACKER_MODULES = {"mlflow": ("mlflow", "sqlalchemy", "alembic"), "wandb": ("wandb",)}


def _validate_tracking(cfg: DictConfig) -> None:
    """A tracker whose package is missing fails here, in one line, not after the run's first round."""
    name = cfg.tracking.name
    needed = TRACKER_MODULES.get(name, ())
    if name == "mlflow" and cfg.tracking.uri and not cfg.tracking.uri.startswith("sqlite:"):
        needed = needed[:1]  # a tracking server or a folder store needs no SQL store here
    missing = [module for module in needed if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(f"tracking={name}: {', '.join(missing)} not installed; pip install 'fedray[{name}]' "
                          "(or tracking=none)")


def _validate_he(cfg: DictConfig, require: Callable[[bool, str, str], None]) -> None:
    """secure_aggregation=he (fedray/secure/he.py): TenSEAL installed, CKKS's keys, and what needs plain updates."""
    sa, sag = cfg.secure_aggregation, cfg.workflows.scatter_and_gather
    if sa.mode != "he":
        return
    from fedray.secure import he

    try:
        he.tenseal()
    except ImportError as err:
        raise ConfigError(f"secure_aggregation.mode=he: {err}") from None
    for problem in he.problems(sa.poly_modulus_degree, list(sa.coeff_mod_bit_sizes), sa.scale_bits, sa.fraction_bits)[:1]:
        raise ConfigError(problem)
    plain = "the controller holds only ciphertexts under secure_aggregation=he"
    require(cfg.algorithm._target_.split(".")[-1] in ("FedAvg", "FedProx", "Algorithm"), "algorithm",
            f"must be fedavg or fedprox with secure_aggregation=he: {plain}, and this algorithm's server step needs "
            "the plain average (FedOpt's optimizer, SCAFFOLD's control variates)")
    require(cfg.aggregator._target_ == "fedray.aggregation.fedavg", "aggregator._target_",
            f"must be fedray.aggregation.fedavg with secure_aggregation=he: {plain}, and it can only add them")
    require(cfg.privacy.mode in ("none", "dp_sgd"), "privacy.mode",
            f"must be none or dp_sgd with secure_aggregation=he: central and local DP's server step needs the plain "
            f"updates ({plain})")
    require(sag.mode == "sync", "workflows.scatter_and_gather.mode",
            "must be sync with secure_aggregation=he (FedBuff's staleness weights need the plain updates)")
    require(sag.exclude_vars is None, "workflows.scatter_and_gather.exclude_vars",
            "must be null with secure_aggregation=he (every variable is encrypted, as FLARE's default encrypt_layers)")
    require(not cfg.workflows.cross_site_validate.enabled, "workflows.cross_site_validate.enabled",
            f"must be false with secure_aggregation=he: cross-site evaluation sends each site's plain model to the "
            f"server ({plain}); the global model is still scored at the sites every eval_every rounds")
    require(not cfg.site.batched_training, "site.batched_training", "must be false with secure_aggregation=he")
    require(not cfg.flare.task_result_filters, "flare.task_result_filters",
            "must be empty with secure_aggregation=he (encryption is the train result's filter)")


def _validate_data(cfg: DictConfig, require: Callable[[bool, str, str], None]) -> None:
    """The dataset's declaration fits its task, and its files are there (fedray/dataset_catalog.py)."""
    data = cfg.data
    sizes = list(data.input_shape)
    require(all(size >= 1 for size in sizes) and len(sizes) == (1 if data.task == "next_token" else 3),
            "data.input_shape", "must be [C, H, W] for images, [L] for next_token windows, each at least 1")
    require(data.num_classes is None or data.num_classes >= 2, "data.num_classes", "must be at least 2 (or null)")
    require(data.num_writers is None or (data.name == "synthetic" and data.num_writers >= 1), "data.num_writers",
            "spreads data=synthetic's samples over writers; at least 1, or null")
    require(data.name != "synthetic" or data.task == "image_classification", "data.task",
            "data=synthetic makes images; set data.task=image_classification")
    for problem in catalog.problems(data)[:1]:
        raise ConfigError(problem)


def _validate_fedbuff(cfg: DictConfig, require: Callable[[bool, str, str], None]) -> None:
    """mode=fedbuff's keys, one line each before Ray starts."""
    sag, key = cfg.workflows.scatter_and_gather, "workflows.scatter_and_gather."
    if sag.mode != "fedbuff":
        return
    concurrency = fedbuff_concurrency(cfg)
    require(1 <= concurrency <= cfg.num_clients, key + "concurrency",
            f"must be between 1 and num_clients={cfg.num_clients} (sites training at once)")
    require(1 <= (sag.buffer_size or concurrency) <= concurrency, key + "buffer_size",
            f"must be between 1 and concurrency={concurrency} (a buffer fills with arrivals of the sites in flight)")
    require(sag.server_lr > 0, key + "server_lr", "must be positive")
    if sag.staleness == "polynomial":
        require(0 <= sag.staleness_a <= 1, key + "staleness_a", "must be in [0, 1] for staleness=polynomial (FLSim's)")
    if sag.staleness in ("threshold", "hinge"):
        require(sag.staleness_a >= 0, key + "staleness_a", f"must be >= 0 for staleness={sag.staleness}")
        require(sag.staleness_b >= 0, key + "staleness_b", f"must be >= 0 for staleness={sag.staleness}")
    require(not cfg.algorithm._target_.endswith("Scaffold"), key + "mode",
            "fedbuff does not run SCAFFOLD (its control variates assume synchronous rounds); use mode=sync")
    require(cfg.privacy.mode == "none", key + "mode",
            "fedbuff does not run with differential privacy yet (its accounting is per synchronous round); privacy=none")
    require(sag.min_clients is None, key + "min_clients",
            "must be null with mode=fedbuff (a buffer aggregates buffer_size arrivals)")
    require(sag.round_deadline is None, key + "round_deadline", "must be null with mode=fedbuff (it has no rounds to end)")
    require(sag.over_selection == 1, key + "over_selection", "must be 1 with mode=fedbuff (it aggregates every arrival)")


def fedbuff_concurrency(cfg: Any) -> int:
    """FedBuff's sites in flight: `concurrency`, else clients_per_round, else every site."""
    sag = cfg["workflows"]["scatter_and_gather"]
    return sag["concurrency"] or sag["clients_per_round"] or cfg["num_clients"]


def _validate_algorithm(cfg: DictConfig, require: Callable[[bool, str, str], None]) -> None:
    """The algorithm's own keys (see conf/algorithm/)."""
    algorithm = cfg.algorithm
    if "mu" in algorithm:
        require(algorithm.mu >= 0, "algorithm.mu", "must be >= 0 (0 is FedAvg), e.g. algorithm.mu=0.01")
    server_optimizer = algorithm.get("server_optimizer")
    if server_optimizer is not None and "lr" in server_optimizer:
        require(server_optimizer.lr > 0, "algorithm.server_optimizer.lr", "must be positive")
    if "control_weights" in algorithm:
        require(algorithm.control_weights in ("sites", "steps"), "algorithm.control_weights",
                "must be sites (the paper's: c moves by the sum of the updates / all sites) or steps (FLARE's: "
                "by their average weighted by NUM_STEPS_CURRENT_ROUND)")
    if algorithm._target_.endswith("Scaffold"):
        require(cfg.workflows.scatter_and_gather.exclude_vars is None, "workflows.scatter_and_gather.exclude_vars",
                "must be null with algorithm=scaffold (every variable has a control variate)")


def _validate_system(cfg: DictConfig, require: Callable[[bool, str, str], None]) -> None:
    """The system group and the clock's round policies (conf/system/, README "Time and heterogeneity")."""
    from fedray.system.profiles import build_profiles

    system, sag = cfg.system, cfg.workflows.scatter_and_gather
    per_round = sag.clients_per_round or cfg.num_clients
    require(sag.over_selection >= 1, "workflows.scatter_and_gather.over_selection",
            "must be >= 1: ceil(over_selection x clients_per_round) sites are sampled, the first clients_per_round "
            "to finish count (1: no over-selection; FedScale's default is 1.3)")
    if sag.over_selection > 1:
        require(per_round < cfg.num_clients and sag.sampling == "fixed", "workflows.scatter_and_gather.over_selection",
                "needs sampling=fixed and clients_per_round below num_clients (it samples more than clients_per_round)")
    if cfg.privacy.mode in ("central", "local"):
        # The ledger counts clients_per_round sites drawn uniformly from num_clients; over-selection and
        # availability pick them by speed and time instead, which its sampling amplification does not cover.
        require(sag.over_selection == 1 and system.availability is None,
                "workflows.scatter_and_gather.over_selection" if sag.over_selection != 1 else "system.availability",
                f"must be 1 / null with privacy={cfg.privacy.mode}: the privacy ledger assumes each round's sites are "
                "drawn uniformly from all of them")
    if sag.round_deadline is not None:
        require(sag.round_deadline > 0, "workflows.scatter_and_gather.round_deadline",
                "must be positive simulated seconds (or null: no deadline)")
    if system.name == "lognormal":
        for key in ("download_bytes_per_s", "upload_bytes_per_s"):
            require(system[key] > 0, f"system.{key}", "must be positive (a median bandwidth)")
        for key in ("seconds_per_sample", "latency_s", "compute_spread", "bandwidth_spread", "latency_spread"):
            require(system[key] >= 0, f"system.{key}", "must be >= 0")
    require(0 <= system.dropout < 1, "system.dropout", "must be in [0, 1): the probability that a task is lost")
    if system.name == "trace":
        require(system.device_capacity is not None, "system.device_capacity",
                "must name FedScale's device_capacity pickle with system=trace (python -m fedray.system.traces DIR "
                "writes one)")
    for key in ("device_capacity", "availability"):
        path = system[key]
        if path is not None and (key == "availability" or system.name == "trace"):
            require(Path(path).is_file(), f"system.{key}", "no such file")
    try:
        profiles = build_profiles(system, site_names(cfg.num_clients), cfg.seed)
        traces = _availability(system.availability, cfg.num_clients)
    except ValueError as err:  # the trace's own line (unsafe pickle, too few clients, a bad entry)
        raise ConfigError(str(err)) from None
    if traces is not None:
        from fedray.system.availability import ever_available

        require(ever_available(traces), "system.availability", "no site is ever online in this trace; give one where "
                "sites have active intervals")
    if sag.round_deadline is not None:
        # The least a task can take: one batch per local epoch, a model of no bytes. Fewer sites than
        # min_clients within the deadline even so: every round would fail.
        needed = sag.min_clients or per_round
        least = cfg.local_epochs * cfg.batch_size
        within = sum(p.seconds_per_sample * least + p.latency_s <= sag.round_deadline for p in profiles.values())
        require(within >= needed, "workflows.scatter_and_gather.round_deadline",
                f"only {within} sites can finish even one batch per epoch within it, min_clients={needed} needed; "
                "raise the deadline or lower min_clients")


def _availability(path: Optional[str], num_clients: int) -> Optional[dict]:
    if path is None:
        return None
    from fedray.system.availability import safe_load, site_traces

    return site_traces(safe_load(path), site_names(num_clients))


def _validate_privacy(cfg: DictConfig, require: Callable[[bool, str, str], None]) -> None:
    """The privacy group's keys (conf/privacy/, README "Privacy"), each wrong value one line naming the fix."""
    privacy, sag = cfg.privacy, cfg.workflows.scatter_and_gather
    require(sag.sampling == "fixed" or sag.clients_per_round is not None, "sampling",
            "poisson needs clients_per_round, the expected number of sites a round (each site joins with "
            "p = clients_per_round/num_clients)")
    if privacy.mode == "none":
        require(privacy.target_epsilon is None, "privacy.target_epsilon", "needs a DP mode: privacy=central or privacy=local")
        return
    try:
        import dp_accounting  # noqa: F401  (the ledger's accountants)
    except ImportError:
        raise ConfigError(f"privacy.mode={privacy.mode}: needs dp-accounting, which is not installed; {PRIVACY_EXTRA}") from None
    adaptive = privacy.clip == "adaptive"
    require(adaptive and privacy.mode == "central" or _is_number(privacy.clip) and privacy.clip > 0, "privacy.clip",
            "must be a positive number (an L2 norm; inf: no clipping)" + (", or adaptive" if privacy.mode == "central"
                                                                          else " (adaptive is central DP's)"))
    if privacy.noise_multiplier is not None:
        require(privacy.noise_multiplier >= 0, "privacy.noise_multiplier", "must be >= 0 (the noise's std / clip)")
    if privacy.delta is not None:
        require(0 < privacy.delta < 1, "privacy.delta", "must be in (0, 1) (null: 1/num_clients)")
    if privacy.target_epsilon is not None:
        require(privacy.target_epsilon > 0, "privacy.target_epsilon", "must be positive (or null: no budget)")
    if adaptive:
        require(privacy.initial_clip > 0, "privacy.initial_clip", "must be positive (the first round's clip norm)")
        require(0 <= privacy.target_quantile <= 1, "privacy.target_quantile", "must be in [0, 1]")
        require(privacy.clip_lr > 0, "privacy.clip_lr", "must be positive (the clip norm's geometric step)")
        if privacy.count_noise is not None:
            require(privacy.count_noise >= 0, "privacy.count_noise", "must be >= 0 (null: expected cohort / 20)")
    if privacy.mode in ("central", "local"):
        # The noisy mean needs each site's update as one vector in one sum with the same weight.
        require(cfg.aggregator._target_ == "fedray.aggregation.fedavg", "aggregator._target_",
                f"must be fedray.aggregation.fedavg with privacy={privacy.mode}: DP sums each site's clipped update "
                "with the same weight")
        require(not sag.aggregation_weights, "workflows.scatter_and_gather.aggregation_weights",
                f"must be empty with privacy={privacy.mode}: every site's clipped update counts the same under DP")
        if cfg.algorithm._target_.endswith("Scaffold"):
            raise ConfigError(f"algorithm=scaffold: its control variates would leave the sites without noise; with "
                              f"privacy={privacy.mode} use algorithm=fedavg, fedprox or fedopt")
    if privacy.mode == "dp_sgd":
        _validate_dp_sgd(cfg, require)
    if privacy.mode == "local":
        require(privacy.epsilon is not None and privacy.epsilon > 0, "privacy.epsilon",
                "must be positive with privacy=local: the epsilon of each site's release")
        require(math.isfinite(privacy.clip), "privacy.clip", "must be finite with privacy=local: it bounds what "
                "a site's release can tell (the noise is calibrated to it)")
        require(privacy.target_epsilon is None, "privacy.target_epsilon",
                "is central DP's; with privacy=local set privacy.epsilon, each release's")
        require(not cfg.workflows.cross_site_validate.enabled, "workflows.cross_site_validate.enabled",
                "must be false with privacy=local: cross-site evaluation sends each site's own model, without noise, "
                "to the server")
    if privacy.mode in ("central", "local"):
        _settle_noise(cfg, require)


def _settle_noise(cfg: DictConfig, require: Callable[[bool, str, str], None]) -> None:
    """Fill in the noise multiplier a DP config leaves to a budget (central's target_epsilon, local's epsilon),
    and refuse what the ledger cannot count or no round can afford. Cached: a run validates twice."""
    from fedray.privacy import delta_of
    from fedray.privacy.ledger import FIXED, Ledger, calibrate, round_event, unsupported

    privacy, sag = cfg.privacy, cfg.workflows.scatter_and_gather
    delta = delta_of(privacy, cfg.num_clients)
    if privacy.mode == "local":
        try:  # each release is one Gaussian mechanism on all of the site's data
            privacy.noise_multiplier = calibrate(privacy.epsilon, delta, 1, privacy.accountant, 1, None, "all")
        except ValueError as err:
            raise ConfigError(f"privacy.epsilon={privacy.epsilon:g}: {err}; choose a larger epsilon") from None
        return
    event = round_event(cfg.num_clients, sag.clients_per_round, sag.sampling, privacy.noise_multiplier or 0.0)
    reason = unsupported(privacy.accountant, event)
    require(reason is None, "privacy.accountant", f"{reason} (clients_per_round={sag.clients_per_round} of "
            f"num_clients={cfg.num_clients} are drawn without replacement)" if event.sampling == FIXED else str(reason))
    adaptive = privacy.clip == "adaptive"
    require(adaptive or math.isfinite(privacy.clip) or privacy.noise_multiplier == 0, "privacy.clip",
            "inf (no clipping) leaves the noise unbounded: give a finite clip, or noise_multiplier=0 (no privacy: a "
            "baseline that matches FedAvg with uniform weights)")
    if privacy.target_epsilon is not None and privacy.noise_multiplier is None:
        try:
            privacy.noise_multiplier = calibrate(privacy.target_epsilon, delta, sag.num_rounds, privacy.accountant,
                                                 cfg.num_clients, sag.clients_per_round, sag.sampling)
        except ValueError as err:
            raise ConfigError(f"privacy.target_epsilon={privacy.target_epsilon:g}: {err} (delta={delta:g}); raise "
                              "target_epsilon or lower rounds") from None
    require(privacy.noise_multiplier is not None, "privacy.noise_multiplier",
            "must be set, or calibrated from privacy.target_epsilon (give one)")
    if adaptive and privacy.noise_multiplier > 0:
        expected = sag.clients_per_round or cfg.num_clients
        count_noise = privacy.count_noise if privacy.count_noise is not None else expected / 20
        require(privacy.noise_multiplier < 2 * count_noise, "privacy.count_noise",
                f"must be more than noise_multiplier/2 = {privacy.noise_multiplier / 2:g} (its default is the expected "
                f"cohort / 20 = {expected / 20:g}): the count's noise is part of noise_multiplier's budget")
    if privacy.target_epsilon is not None:
        first = Ledger(privacy.accountant, delta).epsilon_after(
            round_event(cfg.num_clients, sag.clients_per_round, sag.sampling, privacy.noise_multiplier))
        require(first <= privacy.target_epsilon, "privacy.target_epsilon",
                f"one round with noise_multiplier={privacy.noise_multiplier:g} already spends epsilon {first:.4g} "
                f"(delta={delta:g}); raise noise_multiplier or target_epsilon")


def _validate_dp_sgd(cfg: DictConfig, require: Callable[[bool, str, str], None]) -> None:
    """privacy=dp_sgd: Opacus trains fedray's own sites, per-sample clipping at `clip`, each site's epsilon at `delta`."""
    privacy = cfg.privacy
    try:
        import opacus  # noqa: F401  (here only its presence: importing it costs seconds)
    except ImportError:
        raise ConfigError(f"privacy.mode=dp_sgd: needs Opacus, which is not installed; {PRIVACY_EXTRA}") from None
    require(math.isfinite(privacy.clip), "privacy.clip", "must be finite with privacy=dp_sgd: the noise is "
            "noise_multiplier x clip (Opacus's max_grad_norm, e.g. 1.0)")
    require(privacy.delta is not None, "privacy.delta", "must be set with privacy=dp_sgd: a record-level delta, "
            "below 1/(a site's records), e.g. 1e-5 (FLARE's hello-dp)")
    if privacy.target_epsilon is None:
        require(privacy.noise_multiplier is not None, "privacy.noise_multiplier",
                "must be set with privacy=dp_sgd (e.g. 1.0), or set privacy.target_epsilon to calibrate it per site")
    else:
        require(privacy.noise_multiplier is None, "privacy.noise_multiplier",
                "must be null with privacy.target_epsilon under privacy=dp_sgd: each site's is calibrated to it")
    require(privacy.accountant == "rdp", "privacy.accountant",
            "must be rdp with privacy=dp_sgd: each site's epsilon is Opacus's RDP accountant's")
    require(not runs_own_code(cfg.site), "privacy.mode",
            "dp_sgd trains fedray's own sites; a site.script or site.flare_app trains itself: use Opacus in it, as "
            "FLARE's hello-dp does, and privacy=none here")
    # Where Opacus cannot go: vmap trains several sites as one stacked model, while Opacus's per-sample
    # gradients hook each site's own module (sites_per_task batches, which train sites in turn, are fine).
    require(not cfg.site.batched_training, "site.batched_training",
            "must be false with privacy=dp_sgd: torch.func.vmap's stacked sites cannot run Opacus's per-sample gradients")
    require(not cfg.algorithm.get("mu"), "algorithm.mu", "fedprox's proximal term is no per-sample loss: Opacus would drop its gradient; "
            "with privacy=dp_sgd use algorithm=fedavg, fedopt or scaffold")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_compiles(script: str) -> None:
    try:
        compile(Path(script).read_bytes(), script, "exec")
    except SyntaxError as err:
        raise ConfigError(f"site.script={script}: does not compile (line {err.lineno}: {err.msg})") from None


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def _one_line(err: BaseException, overrides: list[str]) -> str:
    """Turn Hydra/OmegaConf's multi-line composition errors into one line."""
    chain = []
    cause: BaseException | None = err
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(e) for e in chain)

    missing_option = re.search(r"Could not find '([\w/]+)/(\w+)'", text)
    if missing_option:
        group, option = missing_option.groups()
        options = re.findall(r"^\t(\S+)$", str(err), flags=re.M)
        hint = f"; choose one of {', '.join(options)}" if options else ""
        return f"{group}={option}: no such option in conf/{group}/{hint}"

    for e in chain:
        full_key = getattr(e, "full_key", None)
        if not full_key:
            continue
        message = str(getattr(e, "msg", e)).splitlines()[0]
        if "not in struct" in message or "Key '" in message and "not" in message:
            return _unknown_key(full_key)
        return f"{full_key}: {message}"

    unparsable = re.search(r"Error parsing override '([^']+)'", text)
    if unparsable:
        return f"{unparsable.group(1)}: cannot parse this override; quote a value with special characters, e.g. key='(a|b)'"
    bad_override = re.search(r"Could not override '([^']+)'", text)
    if bad_override:
        return _unknown_key(bad_override.group(1))
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _unknown_key(full_key: str) -> str:
    known = _all_keys(OmegaConf.structured(JobConfig))
    close = difflib.get_close_matches(full_key, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else "see conf/config.yaml for the keys"
    return f"{full_key}: unknown config key; {hint}"


def _all_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node.keys():
        path = f"{prefix}{key}"
        keys.append(path)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            keys.extend(_all_keys(child, path + "."))
    return keys
