"""The server's workflows, as in FLARE's hello-pt job: each one a plain function."""

from fedray.server.workflows.cross_site_model_eval import SERVER_MODELS, cross_site_model_eval
from fedray.server.workflows.fedbuff import fedbuff
from fedray.server.workflows.initialize_global_weights import initialize_global_weights
from fedray.server.workflows.scatter_and_gather import LocalModel, RoundFailed, sample_sites, scatter_and_gather

__all__ = ["LocalModel", "SERVER_MODELS", "cross_site_model_eval", "fedbuff", "initialize_global_weights", "scatter_and_gather", "RoundFailed", "sample_sites"]
