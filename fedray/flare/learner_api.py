"""FLARE's learner APIs inside a site, served by fedray: a learner component (FLModel in, FLModel out)
driven by `ModelLearnerExecutor`, as FLARE 2.4's cifar10-sim jobs run `CIFAR10ModelLearner`; and the
older `Learner` (Shareable in, Shareable out) driven by `LearnerExecutor` (FLARE 2.0-2.3's jobs).

Serves `nvflare.app_common.abstract.model_learner` (ModelLearner), `nvflare.app_common.utils.fl_component_wrapper`
(FLComponentWrapper: info/error/stop_task ..., site_name, app_root, current_round ...),
`nvflare.app_common.executors.model_learner_executor` (ModelLearnerExecutor), `nvflare.app_common.utils.fl_model_utils`
(FLModelUtils: FLModel <-> Shareable) and `nvflare.apis.fl_exception` (TaskExecutionError), `nvflare.app_common.abstract.learner_spec` (Learner) and
`nvflare.app_common.executors.learner_executor` (LearnerExecutor), following FLARE
2.4's source: the executor finds its learner among the app's components at START_RUN, sets the learner's
context before every task, initializes it before the first, validates the received model before training
(its metrics travel as `initial_metrics`), and turns a learner's str result into that ReturnCode.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from fedray.fl_model import FLModel, ParamsType
from fedray.flare.executor_api import (
    DXO,
    DataKind,
    EventType,
    Executor,
    FLComponent,
    FLContext,
    FLContextKey,
    ReturnCode,
    Shareable,
    Signal,
    from_shareable,
    make_reply,
)
from fedray.flare.model_api import AppConstants, ValidateType


class TaskExecutionError(Exception):
    """FLARE's: raised by `stop_task` when a learner cannot go on with its task."""


class MetaKey:
    """FLARE's FLModel meta keys (nvflare.app_common.abstract.fl_model.MetaKey)."""

    NUM_STEPS_CURRENT_ROUND = "NUM_STEPS_CURRENT_ROUND"
    INITIAL_METRICS = "initial_metrics"
    VALIDATE_TYPE = "validate_type"
    SUBMIT_MODEL_NAME = "submit_model_name"
    JOB_ID = "job_id"
    SITE_NAME = "site_name"
    CONFIGS = "configs"


_DATA_KIND = {ParamsType.FULL: DataKind.WEIGHTS, ParamsType.DIFF: DataKind.WEIGHT_DIFF}


def _params_type(value: Any) -> str:
    return getattr(value, "value", value)  # FLARE's ParamsType is a str Enum, fedray's plain strings


class FLModelUtils:
    @staticmethod
    def to_shareable(fl_model: FLModel) -> Shareable:
        if fl_model.params is None and not fl_model.metrics:
            raise ValueError("FLModel without params and metrics is NOT supported.")
        if fl_model.params is not None:
            data_kind = _DATA_KIND.get(_params_type(fl_model.params_type or ParamsType.FULL))
            if data_kind is None:
                raise ValueError(f"Invalid ParamsType: ({fl_model.params_type}).")
            meta = {MetaKey.INITIAL_METRICS: fl_model.metrics} if fl_model.metrics else {}
            dxo = DXO(data_kind, data=fl_model.params, meta=meta)
        else:
            dxo = DXO(DataKind.METRICS, data=fl_model.metrics, meta={})
        meta = fl_model.meta or {}
        dxo.meta.update(meta)
        shareable = dxo.to_shareable()
        if fl_model.current_round is not None:
            shareable.set_header(AppConstants.CURRENT_ROUND, fl_model.current_round)
        if fl_model.total_rounds is not None:
            shareable.set_header(AppConstants.NUM_ROUNDS, fl_model.total_rounds)
        if MetaKey.VALIDATE_TYPE in meta:
            shareable.set_header(AppConstants.VALIDATE_TYPE, meta[MetaKey.VALIDATE_TYPE])
        return shareable

    @staticmethod
    def from_shareable(shareable: Shareable, fl_ctx: Optional[FLContext] = None) -> FLModel:
        metrics, params, params_type, meta = None, None, None, {}
        submit_model_name = shareable.get_header(AppConstants.SUBMIT_MODEL_NAME)
        if submit_model_name:  # cross-site evaluation's submit_model carries no model
            meta[MetaKey.SUBMIT_MODEL_NAME] = submit_model_name
        else:
            dxo = from_shareable(shareable)
            meta = dict(dxo.meta)
            if dxo.data_kind == DataKind.METRICS:
                metrics = dxo.data
            else:
                params = dxo.data
                params_type = ParamsType.DIFF if dxo.data_kind == DataKind.WEIGHT_DIFF else ParamsType.FULL
                metrics = meta.get(MetaKey.INITIAL_METRICS)
        validate_type = shareable.get_header(AppConstants.VALIDATE_TYPE)
        if validate_type is not None:
            meta[MetaKey.VALIDATE_TYPE] = validate_type
        for key in (MetaKey.JOB_ID, MetaKey.SITE_NAME):
            if shareable.get_header(key) is not None:
                meta[key] = shareable.get_header(key)
        return FLModel(params=params, params_type=params_type or ParamsType.FULL, metrics=metrics or {}, meta=meta,
                       current_round=shareable.get_header(AppConstants.CURRENT_ROUND),
                       total_rounds=shareable.get_header(AppConstants.NUM_ROUNDS))

    @staticmethod
    def get_meta_prop(model: FLModel, key: str, default: Any = None) -> Any:
        return (model.meta or {}).get(key, default)

    @staticmethod
    def set_meta_prop(model: FLModel, key: str, value: Any) -> None:
        if model.meta is None:
            model.meta = {}
        model.meta[key] = value

    @staticmethod
    def get_configs(model: FLModel) -> Optional[dict]:
        return FLModelUtils.get_meta_prop(model, MetaKey.CONFIGS)


class FLComponentWrapper(FLComponent):
    """A component that logs and reads its context without an fl_ctx argument (the executor sets it)."""

    STATE = None

    def __init__(self) -> None:
        super().__init__()
        self.engine = None
        self.fl_ctx: Optional[FLContext] = None
        self.workspace = None
        self.shareable: Optional[Shareable] = None
        self.args = None
        self.site_name: Optional[str] = None
        self.job_id: Optional[str] = None
        self.app_root: Optional[str] = None
        self.job_root: Optional[str] = None
        self.workspace_root: Optional[str] = None
        self.abort_signal: Optional[Signal] = None
        self.current_round = 0
        self.total_rounds = 0

    def is_aborted(self) -> bool:
        return bool(self.abort_signal and self.abort_signal.triggered)

    def get_shareable_header(self, key: str, default: Any = None) -> Any:
        return self.shareable.get_header(key, default) if self.shareable else default

    def get_context_prop(self, key: str, default: Any = None) -> Any:
        return self.fl_ctx.get_prop(key, default) if self.fl_ctx else default

    def get_component(self, component_id: str) -> Any:
        return self.engine.get_component(component_id) if self.engine else None

    def debug(self, msg: str) -> None:
        self.log_debug(self.fl_ctx, msg)

    def info(self, msg: str) -> None:
        self.log_info(self.fl_ctx, msg)

    def warning(self, msg: str) -> None:
        self.log_warning(self.fl_ctx, msg)

    def error(self, msg: str) -> None:
        self.log_error(self.fl_ctx, msg)

    def exception(self, msg: str) -> None:
        self.log_exception(self.fl_ctx, msg)

    def critical(self, msg: str) -> None:
        self.log_critical(self.fl_ctx, msg)

    def stop_task(self, reason: str) -> None:
        self.log_error(self.fl_ctx, f"Task stopped: {reason}")
        raise TaskExecutionError(reason)

    def initialize(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def finalize(self) -> None:
        pass

    def event(self, event_type: str) -> None:
        self.fire_event(event_type, self.fl_ctx)


class ModelLearner(FLComponentWrapper):
    """Override train, validate, get_model (and configure); each returns an FLModel or a ReturnCode str."""

    def train(self, model: FLModel) -> Any:
        pass

    def get_model(self, model_name: str) -> Any:
        pass

    def validate(self, model: FLModel) -> Any:
        pass

    def configure(self, model: FLModel) -> None:
        pass


class ModelLearnerExecutor(Executor):
    def __init__(self, learner_id: str, train_task: str = AppConstants.TASK_TRAIN,
                 submit_model_task: str = AppConstants.TASK_SUBMIT_MODEL,
                 validate_task: str = AppConstants.TASK_VALIDATION,
                 configure_task: str = AppConstants.TASK_CONFIGURE) -> None:
        super().__init__()
        self.learner_id = learner_id
        self.learner: Optional[ModelLearner] = None
        self.learner_name = ""
        self.is_initialized = False
        self.learner_exe_lock = threading.Lock()  # one task at a time, as FLARE's
        self.task_funcs = {train_task: self.train, submit_model_task: self.submit_model,
                           validate_task: self.validate, configure_task: self.configure}

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self.learner = fl_ctx.get_engine().get_component(self.learner_id)
            if not isinstance(self.learner, ModelLearner):
                found = "no component with that id" if self.learner is None else f"a {type(self.learner).__name__}"
                raise TypeError(f"ModelLearnerExecutor learner_id='{self.learner_id}': {found}, not a ModelLearner")
            self.learner_name = type(self.learner).__name__
        elif event_type == EventType.ABORT_TASK and self.learner:
            self.learner.fl_ctx = fl_ctx
            self.learner.abort()
        elif event_type == EventType.END_RUN and self.learner:
            self.learner.fl_ctx = fl_ctx
            self.learner.finalize()

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        with self.learner_exe_lock:
            self._set_up_learner(shareable, fl_ctx, abort_signal)
            if not self.is_initialized:
                self.is_initialized = True
                self.learner.initialize()
            task = self.task_funcs.get(task_name)
            if task is None:
                self.log_error(fl_ctx, f"Unknown task: {task_name}")
                return make_reply(ReturnCode.TASK_UNKNOWN)
            return task(shareable, fl_ctx)

    def _set_up_learner(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> None:
        learner = self.learner
        learner.shareable, learner.fl_ctx, learner.abort_signal = shareable, fl_ctx, abort_signal
        if not learner.args:
            learner.args = fl_ctx.get_prop(FLContextKey.ARGS)
        if not learner.site_name:
            learner.site_name = fl_ctx.get_identity_name()
        if not learner.job_id:
            learner.job_id = fl_ctx.get_job_id()
        if not learner.engine:
            learner.engine = fl_ctx.get_engine()
            learner.workspace = learner.engine.get_workspace()
            learner.workspace_root = learner.workspace.get_root_dir()
            learner.job_root = learner.workspace.get_run_dir(learner.job_id)
            learner.app_root = learner.workspace.get_app_dir(learner.job_id)
        if shareable:
            learner.current_round = shareable.get_header(AppConstants.CURRENT_ROUND)
            learner.total_rounds = shareable.get_header(AppConstants.NUM_ROUNDS)

    def _call(self, fl_ctx: FLContext, what: str, call: Any) -> Any:
        """The learner's answer, or a reply with FLARE's code for what went wrong."""
        try:
            result = call()
        except Exception as err:
            self.log_exception(fl_ctx, f"Learner {self.learner_name} failed to {what}: {err}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        if isinstance(result, str):
            self.log_error(fl_ctx, f"Learner {self.learner_name} failed to {what}: {result}")
            return make_reply(result)
        if not isinstance(result, FLModel):
            self.log_error(fl_ctx, f"Learner {self.learner_name}: bad result from {what}: {type(result).__name__}")
            return make_reply(ReturnCode.EMPTY_RESULT)
        return result

    def train(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        shareable.set_header(AppConstants.VALIDATE_TYPE, ValidateType.BEFORE_TRAIN_VALIDATE)
        try:
            model = FLModelUtils.from_shareable(shareable)
        except ValueError:
            return make_reply(ReturnCode.BAD_REQUEST_DATA)
        validated = self._call(fl_ctx, "validate before training", lambda: self.learner.validate(model))
        if isinstance(validated, Shareable):
            if validated.get_return_code() == ReturnCode.EXECUTION_EXCEPTION:
                return validated
            validated = None  # a str result: FLARE goes on without the pre-train metrics
        trained = self._call(fl_ctx, "train", lambda: self.learner.train(model))
        if isinstance(trained, Shareable):
            return trained
        if validated is not None and validated.metrics:
            FLModelUtils.set_meta_prop(trained, MetaKey.INITIAL_METRICS, validated.metrics)
        return FLModelUtils.to_shareable(trained)

    def submit_model(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        name = shareable.get_header(AppConstants.SUBMIT_MODEL_NAME)
        result = self._call(fl_ctx, "get_model", lambda: self.learner.get_model(name))
        return result if isinstance(result, Shareable) else FLModelUtils.to_shareable(result)

    def validate(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            model = FLModelUtils.from_shareable(shareable)
        except ValueError:
            return make_reply(ReturnCode.BAD_REQUEST_DATA)
        result = self._call(fl_ctx, "validate", lambda: self.learner.validate(model))
        return result if isinstance(result, Shareable) else FLModelUtils.to_shareable(result)

    def configure(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            model = FLModelUtils.from_shareable(shareable)
        except ValueError:
            return make_reply(ReturnCode.BAD_REQUEST_DATA)
        try:
            self.learner.configure(model)
        except Exception as err:
            self.log_exception(fl_ctx, f"Learner {self.learner_name} failed to configure: {err}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        return make_reply(ReturnCode.OK)


class Learner(FLComponent):
    """FLARE's older learner: override initialize, train, get_model_for_validation, validate (Shareables)."""

    def initialize(self, parts: dict, fl_ctx: FLContext) -> None:
        pass

    def train(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        pass

    def get_model_for_validation(self, model_name: str, fl_ctx: FLContext) -> Shareable:
        pass

    def validate(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        pass

    def abort(self, fl_ctx: FLContext) -> None:
        pass

    def finalize(self, fl_ctx: FLContext) -> None:
        pass


class LearnerExecutor(Executor):
    """FLARE 2.4's: the learner is found and initialized (with every component) at the first task; train
    validates the received model first and passes its metrics on as the train result's initial_metrics."""

    def __init__(self, learner_id: str, train_task: str = AppConstants.TASK_TRAIN,
                 submit_model_task: str = AppConstants.TASK_SUBMIT_MODEL,
                 validate_task: str = AppConstants.TASK_VALIDATION) -> None:
        super().__init__()
        self.learner_id = learner_id
        self.learner: Optional[Learner] = None
        self.train_task, self.submit_model_task, self.validate_task = train_task, submit_model_task, validate_task
        self.is_initialized = False

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.ABORT_TASK and self.learner:
            self.learner.abort(fl_ctx)
        elif event_type == EventType.END_RUN and self.learner:
            self.learner.finalize(fl_ctx)

    def initialize(self, fl_ctx: FLContext) -> None:
        engine = fl_ctx.get_engine()
        self.learner = engine.get_component(self.learner_id)
        if not isinstance(self.learner, Learner):
            raise TypeError(f"LearnerExecutor learner_id='{self.learner_id}': learner must be Learner type. "
                            f"Got: {type(self.learner).__name__}")
        self.learner.initialize(engine.get_all_components(), fl_ctx)

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if not self.is_initialized:
            self.is_initialized = True
            self.initialize(fl_ctx)
        if task_name == self.train_task:
            return self.train(shareable, fl_ctx, abort_signal)
        if task_name == self.submit_model_task:
            result = self.learner.get_model_for_validation(shareable.get_header(AppConstants.SUBMIT_MODEL_NAME), fl_ctx)
            return result if isinstance(result, Shareable) and result else make_reply(ReturnCode.EMPTY_RESULT)
        if task_name == self.validate_task:
            shareable.set_header(AppConstants.VALIDATE_TYPE, ValidateType.MODEL_VALIDATE)
            result = self.learner.validate(shareable, fl_ctx, abort_signal)
            return result if isinstance(result, Shareable) and result else make_reply(ReturnCode.EMPTY_RESULT)
        self.log_error(fl_ctx, f"Could not handle task: {task_name}")
        return make_reply(ReturnCode.TASK_UNKNOWN)

    def train(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        shareable.set_header(AppConstants.VALIDATE_TYPE, ValidateType.BEFORE_TRAIN_VALIDATE)
        validated = self.learner.validate(shareable, fl_ctx, abort_signal)
        trained = self.learner.train(shareable, fl_ctx, abort_signal)
        if not (trained and isinstance(trained, Shareable)):
            return make_reply(ReturnCode.EMPTY_RESULT)
        if isinstance(validated, Shareable) and validated.get_return_code() == ReturnCode.OK:
            try:
                metrics, result = from_shareable(validated), from_shareable(trained)
            except ValueError:
                return trained
            result.meta[MetaKey.INITIAL_METRICS] = metrics.data.get(MetaKey.INITIAL_METRICS, 0)
            return result.to_shareable()
        return trained
