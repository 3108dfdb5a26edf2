"""The checks a job's code must pass before any site starts: every `_target_` imports, the model
takes a batch of the dataset's inputs and gives its classes, `site.batched_training` can run. Apart from `fedray.config` because they
import torch (1.2 s): a job runs them while its Ray starts (fedray/driver/job.py).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from fedray.config import ConfigError, compose, server_code_ids
from fedray.dataset_catalog import DataSpec, spec_of

# torch, and the site code that needs it, are imported in the functions: `python -m fedray.run` imports
# this module at start, and torch's import (1.2 s) must overlap Ray's start, not come before it.


def load_config(overrides: list[str] | tuple[str, ...] = (), config_dirs: list[str] | tuple[str, ...] = (),
                code_check: bool = True) -> DictConfig:
    """A job config from `conf/` and command-line style overrides, checked: the programmatic way to
    build one (tests, notebooks). `config_dirs`: the users' own config folders (`--config-dir`).
    `code_check`: also import every `_target_` and run the model once (`check_code`, which imports
    torch; a job does it anyway, while its Ray starts)."""
    cfg = compose(overrides, config_dirs)
    if code_check:
        check_code(cfg)
    return cfg


def check_code(cfg: DictConfig) -> None:
    """What `validate` leaves to the code: every `_target_` imports, and the model takes a CIFAR-10
    batch (`check_model`). Apart, because importing them imports torch (1.2 s): a job runs this
    while its Ray starts."""
    targets = ["model", "aggregator", "algorithm", "optimizer"] + (["lr_scheduler"] if cfg.lr_scheduler else [])
    targets += [f"algorithm.{key}" for key in ("server_optimizer", "server_lr_scheduler") if cfg.algorithm.get(key) is not None]
    for key in targets:
        _require_importable_target(cfg, key)
    model = check_model(cfg.model, spec_of(cfg.data), cfg.data.name)
    if cfg.site.flare_app:
        check_flare_app(cfg.site.flare_app)
    if server_code_ids(cfg.flare):
        check_flare_app(cfg.flare.server_app, "config_fed_server", set(server_code_ids(cfg.flare)))
    if cfg.site.batched_training:
        _check_batched_training(cfg, model)
    if cfg.privacy.mode == "dp_sgd":
        _check_dp_sgd(cfg, model)


def _check_dp_sgd(cfg: DictConfig, model: Any) -> None:
    """privacy=dp_sgd: Opacus can compute the model's per-sample gradients (no BatchNorm)."""
    from fedray.site.dp_sgd import model_problem

    problem = model_problem(model)
    if problem:
        raise ConfigError(f"model._target_={cfg.model._target_}: {problem}")


def check_dp_sgd_budget(cfg: DictConfig, records: int, site: str) -> None:
    """privacy.target_epsilon under dp_sgd: a noise multiplier reaches it for the site with the fewest
    records (it samples the largest share of its data per step, so it needs the most noise); once the data
    is split, before any round: one line when none does."""
    from fedray.site.dp_sgd import noise_multiplier

    try:
        noise_multiplier(cfg.privacy, records, cfg.batch_size, cfg.local_epochs, cfg.workflows.scatter_and_gather.num_rounds)
    except ValueError as err:
        raise ConfigError(f"privacy.target_epsilon={cfg.privacy.target_epsilon}: no noise reaches it at "
                          f"delta={cfg.privacy.delta} for {site} ({records} records, batch_size={cfg.batch_size}, "
                          f"{cfg.local_epochs} local epochs x {cfg.workflows.scatter_and_gather.num_rounds} rounds) "
                          f"(Opacus: {err}); raise it, or train fewer epochs") from None


def _check_batched_training(cfg: DictConfig, model: Any) -> None:
    """What `site.batched_training` computes: FedAvg's local step, plain SGD, a model without buffers."""
    from fedray.site.batched_training import check_batchable
    from fedray.site.training import plain_sgd

    key = "site.batched_training=true"
    if cfg.site.script or cfg.site.flare_app or not cfg.algorithm._target_.endswith(".FedAvg"):
        raise ConfigError(f"{key}: trains built-in FedAvg sites only (no site.script or site.flare_app, "
                          "algorithm=fedavg); set it false")
    if plain_sgd(OmegaConf.to_container(cfg, resolve=True)) is None:
        raise ConfigError(f"{key}: needs plain SGD (optimizer=sgd without weight_decay, no lr_scheduler); set it false")
    try:
        check_batchable(model)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None


# CIFAR-10's images and classes: what a model is checked against when no dataset is named.
INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
CIFAR10 = DataSpec("image_classification", INPUT_SHAPE, NUM_CLASSES)
# A model for each dataset's task and shape, named in the hint when the job's model does not fit.
MODEL_FOR = {"next_token": "model=char_lstm", (1, 28, 28): "model=femnist_cnn", (3, 32, 32): "model=cnn"}


def check_model(model_cfg: DictConfig, spec: DataSpec = CIFAR10, dataset: str = "cifar10") -> Any:
    """Build the model and run one forward pass on a dummy batch of the dataset's inputs (`spec`: float
    images, or int64 token windows), so a model that cannot take them, or gives other than the dataset's
    classes, fails here in one line rather than in every site actor."""
    import torch
    from hydra.utils import instantiate

    target = model_cfg.get("_target_")
    try:
        model = instantiate(model_cfg)
    except Exception as err:
        raise ConfigError(f"model._target_={target}: cannot be built ({_first_line(err)})") from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model._target_={target}: builds a {type(model).__name__}, not a torch.nn.Module")
    model.eval()
    tokens = spec.task == "next_token"
    channels, *size = spec.input_shape
    what = f"{channels}-token windows" if tokens else "x".join(map(str, (*size, channels))) + " images"  # HxWxC
    hint = MODEL_FOR.get("next_token" if tokens else spec.input_shape)
    try:
        with torch.no_grad():
            output = model(torch.zeros(2, *spec.input_shape, dtype=torch.int64 if tokens else torch.float32))
    except Exception as err:
        fix = f"; pick a model for them, e.g. {hint}" if hint else ""
        raise ConfigError(f"model._target_={target}: fails on a batch of {what} of data={dataset} "
                          f"({_first_line(err)}){fix}") from None
    shape = tuple(getattr(output, "shape", ()))
    if shape != (2, spec.num_classes):
        raise ConfigError(f"model._target_={target}: gives outputs of shape {shape} for 2 inputs, data={dataset} needs "
                          f"(2, {spec.num_classes}) (e.g. +model.num_classes={spec.num_classes})")
    return model


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _require_importable_target(cfg: DictConfig, key: str) -> None:
    node = OmegaConf.select(cfg, key)
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        raise ConfigError(f"{key}: needs a _target_ (e.g. {key}._target_=fedray.models.Net)")
    module_name, _, attribute = target.rpartition(".")
    try:
        getattr(importlib.import_module(module_name), attribute)
    except Exception as err:  # ImportError, AttributeError, or whatever the module raises on import
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{key}._target_={target}: cannot be imported ({reason})") from None


def check_flare_app(app: str, stem: str = "config_fed_client", component_ids: Optional[set] = None) -> None:
    """Every executor and component class a FLARE app names (of a server app: the components fedray runs,
    `component_ids`) is found in its module, without running the module (its FLARE imports are served in
    fedray's actors only): one line for the first that is not."""
    import ast
    import importlib.util

    from fedray.flare.job_folder import read_app_config

    config = read_app_config(Path(app), stem)
    entries = [("executor", entry.get("executor", {})) for entry in config.get("executors", [])]
    entries += [(f"component '{entry.get('id', '?')}'", entry) for entry in config.get("components", [])
                if component_ids is None or entry.get("id") in component_ids]
    for role, entry in entries:
        path = str(entry.get("path") or entry.get("name") or "")
        module_name, _, class_name = path.rpartition(".")
        where = f"{app}: {stem} {role} {path}"
        if module_name.startswith("nvflare."):
            continue  # FLARE's own classes: fedray/flare/job_folder.py decided which it serves
        try:
            spec = importlib.util.find_spec(module_name) if module_name else None
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise ConfigError(f"{where}: no module {module_name or '(none)'} in the app's custom/ or on python_path")
        try:
            tree = ast.parse(Path(spec.origin).read_bytes(), spec.origin)
        except SyntaxError as err:
            raise ConfigError(f"{where}: {spec.origin} does not compile (line {err.lineno}: {err.msg})") from None
        defined = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
        defined |= {alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
                    for alias in node.names}  # a package's __init__ that imports the class
        defined |= {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
                    if isinstance(target, ast.Name)}
        if class_name not in defined:
            raise ConfigError(f"{where}: {spec.origin} defines no {class_name}")
