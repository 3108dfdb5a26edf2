"""FLARE's Lightning Client API: `import fedray.client.lightning as flare` (`nvflare.client.lightning`
inside a fedray site), then `flare.patch(trainer)`.

The patched Trainer talks to fedray itself, as FLARE's FLCallback makes it do:

- `trainer.validate(model)` first loads the task's model (the received global model) and scores
  it; for a cross-site `validate` task those metrics are the answer (they need an `accuracy`).
- `trainer.fit(model)` loads the global model (if validate did not), trains, and sends the fitted
  weights with `NUM_STEPS_CURRENT_ROUND` (optimizer steps of this fit) and the validation metrics.
- Each round's `fit` on the same Trainer trains `max_epochs` (or `max_steps`) more: after a round
  the callback raises the fit loop's limits, where a plain Trainer would stop at once.
- `submit_model` (cross-site evaluation asks for the site's model) is answered with the module's
  current weights, the last fitted ones; a `fit` during a task that is not `train` does not train.
- The optimizer's and LR schedulers' states carry over from round to round (RestoreState).

Needs PyTorch Lightning: `pip install "fedray[lightning]"`. Trainers of either package,
`lightning.pytorch` or `pytorch_lightning`, can be patched.
"""

from __future__ import annotations

import copy
import logging
from functools import lru_cache
from typing import Any, Optional

from fedray.client import (  # noqa: F401  (FLARE's Lightning module offers these too)
    FLModel,
    ParamsType,
    clear,
    get_config,
    get_job_id,
    get_site_name,
    init,
    is_evaluate,
    is_running,
    is_submit_model,
    is_train,
    log,
    receive,
    send,
    shutdown,
    system_info,
)
from fedray.fl_model import NUM_STEPS_CURRENT_ROUND

try:
    import pytorch_lightning as _pl
except ImportError:
    try:
        import lightning.pytorch as _pl
    except ImportError:
        raise ImportError("fedray.client.lightning needs PyTorch Lightning: pip install 'fedray[lightning]'") from None

FL_META_KEY = "__fl_meta__"  # a LightningModule's extra meta for the server, as in FLARE

logger = logging.getLogger(__name__)


def patch(trainer: Any, restore_state: bool = True, load_state_dict_strict: bool = True,
          update_fit_loop: bool = True) -> None:
    """Make `trainer` receive the global model and send the fitted one (see the module's docstring)."""
    callbacks = trainer.callbacks
    if not isinstance(callbacks, list):
        callbacks = [callbacks] if callbacks else []
    fl_class, restore_class = _callback_classes(_package_of(trainer))
    if not any(isinstance(cb, _FLLogic) for cb in callbacks):
        callbacks.append(fl_class(rank=trainer.global_rank, load_state_dict_strict=load_state_dict_strict,
                                  update_fit_loop=update_fit_loop))
    if restore_state and not any(isinstance(cb, _RestoreStateLogic) for cb in callbacks):
        callbacks.append(restore_class())
    trainer.callbacks = callbacks


class _FLLogic:
    """FLARE's FLCallback, on fedray's Client API; mixed into the Trainer's own Callback class."""

    def __init__(self, rank: int = 0, load_state_dict_strict: bool = True, update_fit_loop: bool = True) -> None:
        super().__init__()
        init(rank=str(rank))
        self.rank = rank
        self.load_state_dict_strict = load_state_dict_strict
        self.update_fit_loop = update_fit_loop
        self.metrics: Optional[dict[str, float]] = None
        self.current_round: Optional[int] = None
        self.max_epochs_per_round: Optional[int] = None
        self.max_steps_per_round: Optional[int] = None
        self._is_training = self._is_evaluation = False
        self._pending_train_model: Optional[FLModel] = None
        self._training_round_started = False
        self._round_start_step: Optional[int] = None

    # -- Lightning's hooks
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if self._explicit_validation(trainer):
            model = self._receive_and_update_model(trainer, pl_module)
            if model is not None and self._is_training:
                self._pending_train_model = model  # fit goes on from this model, already loaded

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._explicit_validation(trainer):
            self.metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
            if self._is_evaluation:
                if trainer.global_rank == 0:
                    send(FLModel(metrics=self.metrics), clear_cache=False)
                self.reset_state(trainer)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        model, self._pending_train_model = self._pending_train_model, None
        if model is None:
            model = self._receive_and_update_model(trainer, pl_module)
        if model is not None and self._is_training:
            self._round_start_step = trainer.global_step
            self._training_round_started = True
        else:
            trainer.should_stop = True  # the job ended, or the task is no train task: nothing to fit

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._is_training:
            return
        meta = dict(getattr(pl_module, FL_META_KEY, None) or {})
        meta.setdefault(NUM_STEPS_CURRENT_ROUND, trainer.global_step - self._round_start_step)
        result = FLModel(params=pl_module.cpu().state_dict(), meta=meta, metrics=dict(self.metrics or {}))
        if trainer.global_rank == 0:
            send(result, clear_cache=False)
        self.reset_state(trainer)

    def reset_state(self, trainer: Any) -> None:
        """After a round: the next `fit` trains max_epochs (max_steps) more; the next task is received."""
        if self.current_round is not None:
            if self.max_epochs_per_round is None and trainer.max_epochs and trainer.max_epochs > 0:
                self.max_epochs_per_round = trainer.max_epochs
            if self.max_steps_per_round is None and trainer.max_steps and trainer.max_steps > 0:
                self.max_steps_per_round = trainer.max_steps
            trainer.num_sanity_val_steps = 0  # the sanity check ran in the first round
            if self.update_fit_loop:
                if self.max_epochs_per_round is not None and trainer.current_epoch:
                    trainer.fit_loop.max_epochs = self.max_epochs_per_round + trainer.current_epoch
                if self.max_steps_per_round is not None and trainer.global_step:
                    trainer.fit_loop.epoch_loop.max_steps = self.max_steps_per_round + trainer.global_step
        self.metrics = None
        self._pending_train_model = None
        self._training_round_started = False
        self._round_start_step = None
        clear()

    # -- receiving
    def _explicit_validation(self, trainer: Any) -> bool:
        """A `trainer.validate()` before fit scores the received model; fit's own validation does not."""
        return (self.metrics is None and not self._training_round_started
                and trainer.state.fn == _pl.trainer.states.TrainerFn.VALIDATING)

    def _receive_and_update_model(self, trainer: Any, pl_module: Any) -> Optional[FLModel]:
        model = self._receive_model(trainer, pl_module)
        if model is not None and model.params:
            missing, unexpected = pl_module.load_state_dict(model.params, strict=self.load_state_dict_strict)
            if missing or unexpected:
                logger.warning("loading the global model: missing keys %s, unexpected keys %s", missing, unexpected)
        if model is not None and model.current_round is not None:
            self.current_round = model.current_round
        return model

    def _receive_model(self, trainer: Any, pl_module: Any) -> Optional[FLModel]:
        model = receive() if self.rank == 0 else None
        # Cross-site evaluation first asks for the site's own model: the module's weights, the last fitted.
        while self.rank == 0 and model is not None and is_submit_model():
            send(FLModel(params={k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}))
            model = receive()
        training, evaluating = (is_train(), is_evaluate()) if model is not None else (False, False)
        model = trainer.strategy.broadcast(model, src=0)
        self._is_training = trainer.strategy.broadcast(training, src=0)
        self._is_evaluation = trainer.strategy.broadcast(evaluating, src=0)
        return model


class _RestoreStateLogic:
    """FLARE's RestoreState: the optimizers', AMP scaler's and LR schedulers' states survive each round's fit."""

    def __init__(self) -> None:
        super().__init__()
        self.optimizer_states: list[dict] = []
        self.scaler_states: list[dict] = []
        self.lr_scheduler_states: list[dict] = []

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not self.optimizer_states:
            return
        trainer.strategy.load_optimizer_state_dict({"optimizer_states": self.optimizer_states})
        scaler = getattr(trainer, "scaler", None)
        if self.scaler_states and scaler is not None:
            scaler.load_state_dict(self.scaler_states[0])
        for config, state in zip(trainer.lr_scheduler_configs, self.lr_scheduler_states):
            config.scheduler.load_state_dict(state)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.optimizer_states = [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers]
        scaler = getattr(trainer, "scaler", None)
        self.scaler_states = [copy.deepcopy(scaler.state_dict())] if scaler is not None else []
        self.lr_scheduler_states = [copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs]


def _package_of(trainer: Any) -> str:
    return "pytorch_lightning" if type(trainer).__module__.startswith("pytorch_lightning") else "lightning.pytorch"


@lru_cache(maxsize=None)
def _callback_classes(package: str) -> tuple[type, type]:
    """FLCallback and RestoreState as subclasses of `package`'s Callback: a Trainer accepts only its own."""
    import importlib

    callback = importlib.import_module(f"{package}.callbacks").Callback
    return (type("FLCallback", (_FLLogic, callback), {"__module__": __name__}),
            type("RestoreState", (_RestoreStateLogic, callback), {"__module__": __name__}))


FLCallback, RestoreState = _callback_classes(_pl.__name__)
