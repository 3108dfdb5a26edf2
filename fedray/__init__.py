"""fedray: FLARE's federated-learning job semantics on Ray actors, configured by Hydra."""

from fedray.aggregation import fedavg
from fedray.config import ConfigError, load_config
from fedray.fl_model import FLModel, ParamsType
from fedray.job import JobFailed, run_job
from fedray.synthetic import make_synthetic, write_cifar10

__all__ = [
    "ConfigError",
    "FLModel",
    "JobFailed",
    "ParamsType",
    "fedavg",
    "load_config",
    "make_synthetic",
    "run_job",
    "write_cifar10",
]
