"""FLARE's model-side app API, served to FLARE code inside a fedray site: Learnable and
ModelLearnable (nvflare.app_common.abstract.*), the app constants and app events
(nvflare.app_common.app_constant, app_event_type) and PTModelPersistenceFormatManager
(nvflare.app_opt.pt.model_persistence_format_manager), with FLARE 2.4's values.

Imported where torch may be absent (the alias serves app_constant here too), so torch is imported
only inside the PyTorch manager's methods. Written for fedray from FLARE's (Apache-2.0) source.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

from fedray.fl_model import AlgorithmConstants  # fedray serves FLARE's SCAFFOLD/FedProx meta keys from there
from fedray.flare.executor_api import DXO, DataKind, FLComponent, FLContext, MetaKey

__all__ = [
    "Learnable", "ModelLearnableKey", "ModelLearnable", "validate_model_learnable", "make_model_learnable",
    "model_learnable_to_dxo", "ExecutorTasks", "AppConstants", "EnvironmentKey", "DefaultCheckpointFileName",
    "ModelName", "ModelFormat", "ValidateType", "AlgorithmConstants", "AppEventType",
    "PTModelPersistenceFormatManager",
]

# ---------------------------------------------------------------------------------------------
# nvflare.app_common.abstract.learnable / model
# ---------------------------------------------------------------------------------------------


class Learnable(dict):
    """What a persistor loads and saves; a dict so it crosses processes as-is."""

    def is_empty(self) -> bool:
        return False


class ModelLearnableKey:
    WEIGHTS = "weights"
    META = "meta"


class ModelLearnable(Learnable):
    def is_empty(self) -> bool:
        return not self.get(ModelLearnableKey.WEIGHTS)


def validate_model_learnable(model_learnable: ModelLearnable) -> str:
    """An error text, or "" when valid."""
    if not isinstance(model_learnable, ModelLearnable):
        return f"invalid model learnable: expect Model type but got {type(model_learnable)}"
    if ModelLearnableKey.WEIGHTS not in model_learnable:
        return "invalid model learnable: missing weights"
    if ModelLearnableKey.META not in model_learnable:
        return "invalid model learnable: missing meta"
    return ""


def make_model_learnable(weights: Any, meta_props: Optional[dict]) -> ModelLearnable:
    ml = ModelLearnable()
    ml[ModelLearnableKey.WEIGHTS] = weights
    ml[ModelLearnableKey.META] = meta_props
    return ml


def model_learnable_to_dxo(ml: ModelLearnable) -> DXO:
    err = validate_model_learnable(ml)
    if err:
        raise ValueError(err)
    return DXO(data_kind=DataKind.WEIGHTS, data=ml[ModelLearnableKey.WEIGHTS], meta=ml[ModelLearnableKey.META])


# ---------------------------------------------------------------------------------------------
# nvflare.app_common.app_constant
# ---------------------------------------------------------------------------------------------


class ModelLocator(FLComponent):
    """FLARE's ModelLocator: names the server's models for cross-site evaluation and finds each as a DXO
    (hello-pt's PTModelLocator reads the server app's FL_global_model.pt). fedray runs a job's own one
    in the server components' actor (fedray/server/flare_components.py)."""

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        return []

    def locate_model(self, model_name: str, fl_ctx: FLContext) -> Optional[DXO]:
        return None


class ExecutorTasks:
    TRAIN = "train"
    VALIDATE = "validate"
    CROSS_VALIDATION = "__cross_validation"
    SUBMIT_BEST = "__submit_best"
    REPORT_STATUS = "report_status"


class AppConstants:
    """Task names, context props and meta keys of FLARE's app workflows (values as FLARE 2.4)."""

    CONFIG_PATH = "config_path"
    MODEL_NETWORK = "model_network"
    MULTI_GPU = "multi_gpu"
    TRAIN_CONTEXT = "train_context"
    DEVICE = "device"
    MODEL_NAME = "model_name"
    MODEL_URL = "model_url"
    START_ROUND = "start_round"
    CURRENT_ROUND = "current_round"
    CONTRIBUTION_ROUND = "contribution_round"
    CONTRIBUTION_CLIENT = "contribution_client"
    NUM_ROUNDS = "num_rounds"
    WAIT_AFTER_MIN_CLIENTS = "wait_after_min_clients"

    NUM_TOTAL_STEPS = "num_total_steps"
    NUM_EPOCHS_CURRENT_ROUND = "num_epochs_current_round"
    NUM_TOTAL_EPOCHS = "num_total_epochs"
    LOCAL_EPOCHS = "local_epochs"

    IS_FIRST_ROUND = "is_first_round"
    MY_RANK = "my_rank"
    INITIAL_LEARNING_RATE = "initial_learning_rate"
    CURRENT_LEARNING_RATE = "current_learning_rate"
    NUMBER_OF_GPUS = "number_of_gpus"
    META_COOKIE = "cookie"
    META_DATA = "meta_data"
    GLOBAL_MODEL = "global_model"

    IS_BEST = "is_best"
    FAILURE = "failure"

    LOG_DIR = "model_log_dir"
    CKPT_PRELOAD_PATH = "ckpt_preload_path"

    DXO = "DXO"

    PHASE = "_phase_"
    PHASE_INIT = "_init_"
    PHASE_TRAIN = "train"
    PHASE_MODEL_VALIDATION = "model_validation"
    PHASE_FINISHED = "_finished_"

    STATUS_WAIT = "_wait_"
    STATUS_DONE = "_done_"
    STATUS_TRAINING = "_training_"
    STATUS_IDLE = "_idle_"

    MODEL_LOAD_PATH = "_model_load_path"
    MODEL_SAVE_PATH = "_model_save_path"
    DEFAULT_MODEL_DIR = "models"

    ROUND = "_round_"
    MODEL_WEIGHTS = "_model_weights_"
    AGGREGATION_RESULT = "_aggregation_result"
    AGGREGATION_TRIGGERED = "_aggregation_triggered"
    AGGREGATION_ACCEPTED = "_aggregation_accepted"
    TRAIN_SHAREABLE = "_train_shareable_"
    TRAINING_RESULT = "_training_result_"

    SUBMIT_MODEL_FAILURE_REASON = "_submit_model_failure_reason"
    CROSS_VAL_DIR = "cross_site_val"
    CROSS_VAL_MODEL_DIR_NAME = "model_shareables"
    CROSS_VAL_RESULTS_DIR_NAME = "result_shareables"
    CROSS_VAL_MODEL_PATH = "_cross_val_model_path_"
    CROSS_VAL_RESULTS_PATH = "_cross_val_results_path_"
    RECEIVED_MODEL = "_receive_model_"
    RECEIVED_MODEL_OWNER = "_receive_model_owner_"
    MODEL_TO_VALIDATE = "_model_to_validate_"
    DATA_CLIENT = "_data_client_"
    VALIDATION_RESULT = "_validation_result_"

    TASK_SUBMIT_MODEL = "submit_model"
    TASK_VALIDATION = "validate"
    TASK_CONFIGURE = "configure"

    CROSS_VAL_SERVER_MODEL = "_cross_val_server_model_"
    CROSS_VAL_CLIENT_MODEL = "_cross_val_client_model_"
    PARTICIPATING_CLIENTS = "_particpating_clients_"  # FLARE's spelling: the value is what travels

    MODEL_OWNER = "_model_owner_"

    DEFAULT_FORMATTER_ID = "formatter"
    DEFAULT_MODEL_LOCATOR_ID = "model_locator"

    TASK_END_RUN = "_end_run_"
    TASK_TRAIN = "train"
    TASK_GET_WEIGHTS = "get_weights"

    DEFAULT_AGGREGATOR_ID = "aggregator"
    DEFAULT_PERSISTOR_ID = "persistor"
    DEFAULT_SHAREABLE_GENERATOR_ID = "shareable_generator"

    SUBMIT_MODEL_NAME = "submit_model_name"
    VALIDATE_TYPE = "_validate_type"

    CLIENT_UNKNOWN = "unknown"


class EnvironmentKey:
    CHECKPOINT_DIR = "APP_CKPT_DIR"
    CHECKPOINT_FILE_NAME = "APP_CKPT"


class DefaultCheckpointFileName:
    GLOBAL_MODEL = "FL_global_model.pt"
    BEST_GLOBAL_MODEL = "best_FL_global_model.pt"


class ModelName:
    BEST_MODEL = "best_model"
    FINAL_MODEL = "final_model"


class ModelFormat:
    PT_CHECKPOINT = "pt_checkpoint"
    TORCH_SCRIPT = "torch_script"
    PT_ONNX = "pt_onnx"
    TF_CHECKPOINT = "tf_checkpoint"
    KERAS = "keras_model"


class ValidateType:
    BEFORE_TRAIN_VALIDATE = "before_train_validate"
    MODEL_VALIDATE = "model_validate"


# ---------------------------------------------------------------------------------------------
# nvflare.app_common.app_event_type
# ---------------------------------------------------------------------------------------------


class AppEventType:
    BEFORE_AGGREGATION = "_before_aggregation"
    END_AGGREGATION = "_end_aggregation"

    SUBMIT_LOCAL_BEST_MODEL = "_submit_local_best_model"
    SERVER_RECEIVE_BEST_MODEL = "_server_receive_best_model"
    RECEIVE_VALIDATION_MODEL = "_receive_validation_model"
    SEND_VALIDATION_RESULTS = "_send_validation_results"
    RECEIVE_VALIDATION_RESULTS = "_receive_validation_results"

    BEFORE_INITIALIZE = "_before_initialize"
    AFTER_INITIALIZE = "_after_initialize"
    BEFORE_TRAIN = "_before_train"
    AFTER_TRAIN = "_after_train"

    BEFORE_SHAREABLE_TO_LEARNABLE = "_before_model_update"
    AFTER_SHAREABLE_TO_LEARNABLE = "_after_model_update"
    BEFORE_LEARNABLE_PERSIST = "_before_save_model"
    AFTER_LEARNABLE_PERSIST = "_after_save_model"
    BEFORE_SEND_BEST_MODEL = "_before_send_best_model"
    AFTER_SEND_BEST_MODEL = "_after_send_best_model"
    LOCAL_BEST_MODEL_AVAILABLE = "_local_best_model_available"
    GLOBAL_BEST_MODEL_AVAILABLE = "_global_best_model_available"
    BEFORE_GET_VALIDATION_MODELS = "_before_get_validation_models"
    AFTER_GET_VALIDATION_MODELS = "_after_get_validation_models"
    SEND_MODEL_FOR_VALIDATION = "_send_model_for_validation"
    BEFORE_VALIDATE_MODEL = "_before_validate_model"
    AFTER_VALIDATE_MODEL = "_after_validate_model"
    BEFORE_SUBMIT_VALIDATION_RESULTS = "_before_submit_validation_results"
    AFTER_SUBMIT_VALIDATION_RESULTS = "_after_submit_validation_results"

    ROUND_STARTED = "_round_started"
    ROUND_DONE = "_round_done"
    INITIAL_MODEL_LOADED = "_initial_model_loaded"
    BEFORE_TRAIN_TASK = "_before_train_task"
    RECEIVE_CONTRIBUTION = "_receive_contribution"
    AFTER_CONTRIBUTION_ACCEPT = "_after_contribution_accept"
    AFTER_AGGREGATION = "_after_aggregation"
    BEFORE_CONTRIBUTION_ACCEPT = "_before_contribution_accept"
    GLOBAL_WEIGHTS_UPDATED = "_global_weights_updated"
    TRAINING_STARTED = "_training_started"
    TRAINING_FINISHED = "_training_finished"
    TRAIN_DONE = "_train_done"

    CROSS_VAL_INIT = "_cross_val_init"
    VALIDATION_RESULT_RECEIVED = "_validation_result_received"
    RECEIVE_BEST_MODEL = "_receive_best_model"


# ---------------------------------------------------------------------------------------------
# nvflare.app_opt.pt.model_persistence_format_manager
# ---------------------------------------------------------------------------------------------


class PTModelPersistenceFormatManager:
    """Between a saved PyTorch checkpoint and a ModelLearnable of numpy arrays.

    A checkpoint is either a plain state_dict or FLARE's {"model": state_dict, "meta_props": ...,
    "train_conf": ..., other keys}; it is always saved in the second form, other keys kept. Weights
    that a filter already processed (meta PROCESSED_KEYS, e.g. encrypted) are passed through as they
    are. With allow_numpy_conversion=False (FLARE >= 2.6) tensors stay tensors both ways.
    """

    PERSISTENCE_KEY_MODEL = "model"
    PERSISTENCE_KEY_TRAIN_CONF = "train_conf"
    PERSISTENCE_KEY_META_PROPS = "meta_props"

    def __init__(self, data: dict, default_train_conf: Optional[dict] = None,
                 allow_numpy_conversion: bool = True) -> None:
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict but got {type(data)}")
        self.meta: Optional[dict] = None
        self.train_conf: Optional[dict] = None
        self.other_props: dict[str, Any] = {}
        reserved = (self.PERSISTENCE_KEY_MODEL, self.PERSISTENCE_KEY_META_PROPS, self.PERSISTENCE_KEY_TRAIN_CONF)
        if self.PERSISTENCE_KEY_MODEL not in data:
            self.var_dict = data
        else:
            self.var_dict = data[self.PERSISTENCE_KEY_MODEL]
            self.meta = data.get(self.PERSISTENCE_KEY_META_PROPS)
            self.train_conf = data.get(self.PERSISTENCE_KEY_TRAIN_CONF)
            self.other_props = {k: v for k, v in data.items() if k not in reserved}
        if not self.train_conf:
            self.train_conf = default_train_conf
        self._allow_numpy_conversion = allow_numpy_conversion

    def get_processed_keys(self) -> dict:
        """{var name: True} for the weights a filter already processed (left as they are)."""
        if self.meta:
            return self.meta.get(MetaKey.PROCESSED_KEYS, {})
        return {}

    _get_processed_vars = get_processed_keys  # FLARE's own name for it

    def to_model_learnable(self, exclude_vars: Any) -> ModelLearnable:
        """`exclude_vars`: None or a compiled regex; names it `search`es are left out."""
        import torch

        processed = self.get_processed_keys()
        weights = {}
        for k, v in self.var_dict.items():
            if exclude_vars and exclude_vars.search(k):
                continue
            if not processed.get(k, False) and self._allow_numpy_conversion:
                if v.dtype == torch.bfloat16:  # numpy has no bfloat16
                    v = v.to(torch.float32)
                weights[k] = v.cpu().numpy()
            else:
                weights[k] = v
        return make_model_learnable(weights, self.meta)

    def to_persistence_dict(self) -> dict:
        import torch

        processed = self.get_processed_keys()
        weights: OrderedDict[str, Any] = OrderedDict()
        for k, v in self.var_dict.items():
            if not processed.get(k, False) and self._allow_numpy_conversion:
                weights[k] = torch.as_tensor(v)
            else:
                weights[k] = v
        result: OrderedDict[str, Any] = OrderedDict()
        result[self.PERSISTENCE_KEY_MODEL] = weights
        if self.meta:
            result[self.PERSISTENCE_KEY_META_PROPS] = self.meta
        if self.train_conf:
            result[self.PERSISTENCE_KEY_TRAIN_CONF] = self.train_conf
        result.update(self.other_props)
        return result

    def update(self, ml: ModelLearnable) -> None:
        """Merge learned weights in; weights the learnable does not carry are kept (partial updates)."""
        err = validate_model_learnable(ml)
        if err:
            raise ValueError(err)
        self.meta = ml.get(ModelLearnableKey.META)
        for k, v in (ml.get(ModelLearnableKey.WEIGHTS) or {}).items():
            self.var_dict[k] = v

    @staticmethod
    def get_persist_model_format() -> str:
        return ModelFormat.PT_CHECKPOINT
