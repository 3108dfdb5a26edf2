"""FLARE's executor-side API (`nvflare.apis.*`), served to FLARE code inside a fedray site.

FLARE executors, filters and learners subclass `Executor`/`FLComponent` and pass `Shareable`, `DXO`,
`FLContext` and `Signal` around; fedray runs them in a site's process, so this module gives them
those names with FLARE 2.4's behaviour and FLARE's constant values (the values travel in shareables
and contexts, and users compare them). It serves nvflare.apis.shareable, fl_constant, dxo, signal,
event_type, fl_context, fl_component, executor and workspace (fedray/flare/nvflare_alias.py).
Written for fedray from FLARE's (Apache-2.0) source; pure Python: no Ray, no torch, no numpy.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
import traceback
from abc import ABC, abstractmethod
from typing import Any, Callable, Optional, Union

# ---------------------------------------------------------------------------------------------
# nvflare.apis.fl_constant
# ---------------------------------------------------------------------------------------------


class ReturnCode:
    OK = "OK"

    BAD_PEER_CONTEXT = "BAD_PEER_CONTEXT"
    BAD_REQUEST_DATA = "BAD_REQUEST_DATA"
    BAD_TASK_DATA = "BAD_TASK_DATA"
    COMMUNICATION_ERROR = "COMMUNICATION_ERROR"
    ERROR = "ERROR"
    EXECUTION_EXCEPTION = "EXECUTION_EXCEPTION"
    EXECUTION_RESULT_ERROR = "EXECUTION_RESULT_ERROR"
    HANDLER_EXCEPTION = "HANDLER_EXCEPTION"
    MISSING_PEER_CONTEXT = "MISSING_PEER_CONTEXT"
    RUN_MISMATCH = "RUN_MISMATCH"
    TASK_ABORTED = "TASK_ABORTED"
    TASK_DATA_FILTER_ERROR = "TASK_DATA_FILTER_ERROR"
    TASK_RESULT_FILTER_ERROR = "TASK_RESULT_FILTER_ERROR"
    TASK_UNKNOWN = "TASK_UNKNOWN"
    TASK_UNSUPPORTED = "TASK_UNSUPPORTED"
    TOPIC_UNKNOWN = "TOPIC_UNKNOWN"
    MODEL_UNRECOGNIZED = "MODEL_UNRECOGNIZED"
    VALIDATE_TYPE_UNKNOWN = "VALIDATE_TYPE_UNKNOWN"
    EMPTY_RESULT = "EMPTY_RESULT"
    UNSAFE_JOB = "UNSAFE_JOB"
    SERVER_NOT_READY = "SERVER_NOT_READY"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"


class ReservedKey:
    MANAGER = "__manager__"
    ENGINE = "__engine__"
    AUX_RUNNER = "__aux_runner__"
    RUN_NUM = "__run_num__"  # FLARE keeps the job id under this (historic) name
    IDENTITY_NAME = "__identity_name__"
    PEER_CTX = "__peer_ctx__"
    RC = "__rc__"
    COOKIE_JAR = "__cookie_jar__"
    WORKSPACE_ROOT = "__workspace_root__"
    APP_ROOT = "__app_root__"
    CLIENT_NAME = "__client_name__"
    TASK_NAME = "__task_name__"
    TASK_DATA = "__task_data__"
    TASK_RESULT = "__task_result__"
    TASK_ID = "__task_id__"
    EVENT_ID = "__event_id__"
    AUDIT_EVENT_ID = "__audit_event_id__"
    IS_RESEND = "__is_resend__"
    RUNNER = "__runner__"
    WORKFLOW = "__workflow__"
    REPLY = "__reply__"
    EVENT_ORIGIN = "__event_origin__"
    EVENT_ORIGIN_SITE = "__event_origin_site__"
    EVENT_DATA = "__event_data__"
    EVENT_SCOPE = "__event_scope__"
    RUN_ABORT_SIGNAL = "__run_abort_signal__"
    SHAREABLE = "__shareable__"
    SHARED_FL_CONTEXT = "__shared_fl_context__"
    ARGS = "__args__"
    WORKSPACE_OBJECT = "__workspace_object__"
    RANK_NUMBER = "__rank_number__"
    NUM_OF_PROCESSES = "__num_of_processes__"
    FROM_RANK_NUMBER = "__from_rank_number__"
    SECURE_MODE = "__secure_mode__"
    SIMULATE_MODE = "__simulate_mode__"
    SP_END_POINT = "__sp_end_point__"
    JOB_INFO = "__job_info__"
    JOB_META = "__job_meta__"
    CURRENT_JOB_ID = "__current_job_id__"
    JOB_RUN_NUMBER = "__job_run_number__"
    JOB_DEPLOY_DETAIL = "__job_deploy_detail__"
    FATAL_SYSTEM_ERROR = "__fatal_system_error__"
    JOB_IS_UNSAFE = "__job_is_unsafe__"
    CUSTOM_PROPS = "__custom_props__"
    EXCEPTIONS = "__exceptions__"


class FLContextKey:
    TASK_NAME = ReservedKey.TASK_NAME
    TASK_DATA = ReservedKey.TASK_DATA
    TASK_RESULT = ReservedKey.TASK_RESULT
    TASK_ID = ReservedKey.TASK_ID
    EVENT_ID = ReservedKey.EVENT_ID
    EVENT_ORIGIN = ReservedKey.EVENT_ORIGIN
    EVENT_ORIGIN_SITE = ReservedKey.EVENT_ORIGIN_SITE
    EVENT_DATA = ReservedKey.EVENT_DATA
    EVENT_SCOPE = ReservedKey.EVENT_SCOPE
    EXCEPTIONS = ReservedKey.EXCEPTIONS
    CLIENT_NAME = ReservedKey.CLIENT_NAME
    WORKSPACE_ROOT = ReservedKey.WORKSPACE_ROOT
    CURRENT_RUN = ReservedKey.RUN_NUM
    APP_ROOT = ReservedKey.APP_ROOT
    PEER_CONTEXT = ReservedKey.PEER_CTX
    IS_CLIENT_TASK_RESEND = ReservedKey.IS_RESEND
    RUNNER = ReservedKey.RUNNER
    WORKFLOW = ReservedKey.WORKFLOW
    SHAREABLE = ReservedKey.SHAREABLE
    RUN_ABORT_SIGNAL = ReservedKey.RUN_ABORT_SIGNAL
    ARGS = ReservedKey.ARGS
    REPLY = ReservedKey.REPLY
    WORKSPACE_OBJECT = ReservedKey.WORKSPACE_OBJECT
    RANK_NUMBER = ReservedKey.RANK_NUMBER
    NUM_OF_PROCESSES = ReservedKey.NUM_OF_PROCESSES
    FROM_RANK_NUMBER = ReservedKey.FROM_RANK_NUMBER
    SECURE_MODE = ReservedKey.SECURE_MODE
    SIMULATE_MODE = ReservedKey.SIMULATE_MODE
    SP_END_POINT = ReservedKey.SP_END_POINT
    JOB_INFO = ReservedKey.JOB_INFO
    JOB_META = ReservedKey.JOB_META
    CURRENT_JOB_ID = ReservedKey.CURRENT_JOB_ID
    JOB_RUN_NUMBER = ReservedKey.JOB_RUN_NUMBER
    JOB_DEPLOY_DETAIL = ReservedKey.JOB_DEPLOY_DETAIL
    CUSTOM_PROPS = ReservedKey.CUSTOM_PROPS
    JOB_SCOPE_NAME = "__job_scope_name__"
    EFFECTIVE_JOB_SCOPE_NAME = "__effective_job_scope_name__"
    SCOPE_PROPERTIES = "__scope_props__"
    SCOPE_OBJECT = "__scope_object__"
    FATAL_SYSTEM_ERROR = ReservedKey.FATAL_SYSTEM_ERROR
    COMMUNICATION_ERROR = "Flare_communication_error__"
    UNAUTHENTICATED = "Flare_unauthenticated__"
    CLIENT_RESOURCE_SPECS = "__client_resource_specs"
    JOB_PARTICIPANTS = "__job_participants"
    JOB_BLOCK_REASON = "__job_block_reason"
    SSID = "__ssid__"
    CLIENT_TOKEN = "__client_token"
    AUTHORIZATION_RESULT = "_authorization_result"
    AUTHORIZATION_REASON = "_authorization_reason"
    CLIENT_REGISTER_DATA = "_client_register_data"
    SECURITY_ITEMS = "_security_items"
    COMMAND_NAME = "_command_name"
    SITE_NAME = "__site_name"
    USER_NAME = "__user_name"
    USER_ORG = "__user_org"
    USER_ROLE = "__user_role"
    SUBMITTER_NAME = "_submitterName"
    SUBMITTER_ORG = "_submitterOrg"
    SUBMITTER_ROLE = "_submitterRole"
    COMPONENT_BUILD_ERROR = "__component_build_error__"
    COMPONENT_CONFIG = "__component_config__"
    COMPONENT_NODE = "__component_node__"
    CONFIG_CTX = "__config_ctx__"
    FILTER_DIRECTION = "__filter_dir__"
    ROOT_URL = "__root_url__"
    NOT_READY_TO_END_RUN = "not_ready_to_end_run__"


class FedEventHeader:
    TIMESTAMP = "_timestamp"
    EVENT_TYPE = "_event_type"
    DIRECTION = "_direction"
    ORIGIN = "_origin"
    TARGETS = "_targets"


class EventScope:
    FEDERATION = "federation"
    LOCAL = "local"


class LogMessageTag:
    DEBUG = "log/debug"
    ERROR = "log/error"
    EXCEPTION = "log/exception"
    INFO = "log/info"
    WARNING = "log/warning"
    CRITICAL = "log/critical"
    LOG_RECORD = "log_record"


class JobConstants:
    SERVER_JOB_CONFIG = "config_fed_server.json"
    CLIENT_JOB_CONFIG = "config_fed_client.json"
    META_FILE = "meta.json"
    META = "meta"


class WorkspaceConstants:
    """The file and folder names inside a FLARE workspace (`Workspace` builds its paths from them)."""

    STARTUP_FOLDER_NAME = "startup"
    SITE_FOLDER_NAME = "local"
    CUSTOM_FOLDER_NAME = "custom"
    LOGGING_CONFIG = "log.config"
    DEFAULT_LOGGING_CONFIG = LOGGING_CONFIG + ".default"
    AUDIT_LOG = "audit.log"
    LOG_FILE_NAME = "log.txt"
    STATS_POOL_SUMMARY_FILE_NAME = "stats_pool_summary.json"
    STATS_POOL_RECORDS_FILE_NAME = "stats_pool_records.csv"
    RESTART_FILE = "restart.fl"
    SHUTDOWN_FILE = "shutdown.fl"
    WORKSPACE_PREFIX = ""
    APP_PREFIX = "app_"
    SERVER_STARTUP_CONFIG = "fed_server.json"
    CLIENT_STARTUP_CONFIG = "fed_client.json"
    SERVER_APP_CONFIG = JobConstants.SERVER_JOB_CONFIG
    CLIENT_APP_CONFIG = JobConstants.CLIENT_JOB_CONFIG
    JOB_META_FILE = "meta.json"
    AUTHORIZATION_CONFIG = "authorization.json"
    DEFAULT_AUTHORIZATION_CONFIG = AUTHORIZATION_CONFIG + ".default"
    RESOURCES_CONFIG = "resources.json"
    DEFAULT_RESOURCES_CONFIG = RESOURCES_CONFIG + ".default"
    PRIVACY_CONFIG = "privacy.json"
    SAMPLE_PRIVACY_CONFIG = PRIVACY_CONFIG + ".sample"
    JOB_RESOURCES_CONFIG = "job_resources.json"
    ADMIN_STARTUP_CONFIG = "fed_admin.json"


class SiteType:
    SERVER = "server"
    CLIENT = "client"
    ALL = "@ALL"


class FLMetaKey:
    NUM_STEPS_CURRENT_ROUND = "NUM_STEPS_CURRENT_ROUND"
    PROCESSED_ALGORITHM = "PROCESSED_ALGORITHM"
    PROCESSED_KEYS = "PROCESSED_KEYS"
    INITIAL_METRICS = "initial_metrics"
    FILTER_HISTORY = "filter_history"
    CONFIGS = "configs"
    VALIDATE_TYPE = "validate_type"
    CURRENT_ROUND = "current_round"
    TOTAL_ROUNDS = "total_rounds"
    JOB_ID = "job_id"
    SITE_NAME = "site_name"
    PROCESS_RC_FILE = "_process_rc.txt"
    SUBMIT_MODEL_NAME = "submit_model_name"


class FilterKey:
    IN = "in"
    OUT = "out"
    INOUT = "inout"
    DELIMITER = "/"


class SystemVarName:
    SITE_NAME = "SITE_NAME"
    WORKSPACE = "WORKSPACE"
    JOB_ID = "JOB_ID"
    ROOT_URL = "ROOT_URL"
    SECURE_MODE = "SECURE_MODE"


# ---------------------------------------------------------------------------------------------
# nvflare.apis.event_type
# ---------------------------------------------------------------------------------------------


class EventType:
    """FLARE's built-in events (the values are what handlers compare against)."""

    SYSTEM_START = "_system_start"
    SYSTEM_END = "_system_end"
    ABOUT_TO_START_RUN = "_about_to_start_run"
    START_RUN = "_start_run"
    ABOUT_TO_END_RUN = "_about_to_end_run"
    END_RUN = "_end_run"
    CHECK_END_RUN_READINESS = "_check_end_run_readiness"
    SWAP_IN = "_swap_in"
    SWAP_OUT = "_swap_out"
    START_WORKFLOW = "_start_workflow"
    END_WORKFLOW = "_end_workflow"
    ABORT_TASK = "_abort_task"
    FATAL_SYSTEM_ERROR = "_fatal_system_error"
    JOB_DEPLOYED = "_job_deployed"
    JOB_STARTED = "_job_started"
    JOB_COMPLETED = "_job_completed"
    JOB_ABORTED = "_job_aborted"
    JOB_CANCELLED = "_job_cancelled"

    BEFORE_PULL_TASK = "_before_pull_task"
    AFTER_PULL_TASK = "_after_pull_task"
    BEFORE_PROCESS_SUBMISSION = "_before_process_submission"
    AFTER_PROCESS_SUBMISSION = "_after_process_submission"

    BEFORE_TASK_DATA_FILTER = "_before_task_data_filter"
    AFTER_TASK_DATA_FILTER = "_after_task_data_filter"
    BEFORE_TASK_RESULT_FILTER = "_before_task_result_filter"
    AFTER_TASK_RESULT_FILTER = "_after_task_result_filter"
    BEFORE_TASK_EXECUTION = "_before_task_execution"
    AFTER_TASK_EXECUTION = "_after_task_execution"
    BEFORE_SEND_TASK_RESULT = "_before_send_task_result"
    AFTER_SEND_TASK_RESULT = "_after_send_task_result"

    CRITICAL_LOG_AVAILABLE = "_critical_log_available"
    ERROR_LOG_AVAILABLE = "_error_log_available"
    EXCEPTION_LOG_AVAILABLE = "_exception_log_available"
    WARNING_LOG_AVAILABLE = "_warning_log_available"
    INFO_LOG_AVAILABLE = "_info_log_available"
    DEBUG_LOG_AVAILABLE = "_debug_log_available"

    PRE_RUN_RESULT_AVAILABLE = "_pre_run_result_available"

    BEFORE_CHECK_CLIENT_RESOURCES = "_before_check_client_resources"
    AFTER_CHECK_CLIENT_RESOURCES = "_after_check_client_resources"
    DEPLOY_JOB_TO_SERVER = "_deploy_job_to_server"
    DEPLOY_JOB_TO_CLIENT = "_deploy_job_to_client"

    BEFORE_CHECK_RESOURCE_MANAGER = "_before_check_resource_manager"

    BEFORE_SEND_ADMIN_COMMAND = "_before_send_admin_command"

    BEFORE_CLIENT_REGISTER = "_before_client_register"
    AFTER_CLIENT_REGISTER = "_after_client_register"
    CLIENT_REGISTERED = "_client_registered"
    SYSTEM_BOOTSTRAP = "_system_bootstrap"

    AUTHORIZE_COMMAND_CHECK = "_authorize_command_check"
    BEFORE_BUILD_COMPONENT = "_before_build_component"


# ---------------------------------------------------------------------------------------------
# nvflare.apis.shareable
# ---------------------------------------------------------------------------------------------


class ReservedHeaderKey:
    HEADERS = "__headers__"
    TOPIC = "__topic__"
    RC = ReservedKey.RC
    COOKIE_JAR = ReservedKey.COOKIE_JAR
    PEER_PROPS = "__peer_props__"
    REPLY_IS_LATE = "__reply_is_late__"
    TASK_NAME = ReservedKey.TASK_NAME
    TASK_ID = ReservedKey.TASK_ID
    WORKFLOW = ReservedKey.WORKFLOW
    AUDIT_EVENT_ID = ReservedKey.AUDIT_EVENT_ID
    CONTENT_TYPE = "__content_type__"
    TASK_OPERATOR = "__task_operator__"


class Shareable(dict):
    """What a task carries in and out: a plain dict (so it pickles across Ray like FLARE's over the
    wire) whose headers live in one reserved key."""

    def __init__(self) -> None:
        super().__init__()
        self[ReservedHeaderKey.HEADERS] = {}

    def set_header(self, key: str, value: Any) -> None:
        headers = self.get(ReservedHeaderKey.HEADERS)
        if not headers:
            headers = {}
            self[ReservedHeaderKey.HEADERS] = headers
        headers[key] = value

    def get_header(self, key: str, default: Any = None) -> Any:
        headers = self.get(ReservedHeaderKey.HEADERS)
        if not headers:
            return default
        if not isinstance(headers, dict):
            raise ValueError(f"header object must be a dict, but got {type(headers)}")
        return headers.get(key, default)

    def get_return_code(self, default: str = ReturnCode.OK) -> Any:
        return self.get_header(ReservedHeaderKey.RC, default)

    def set_return_code(self, rc: str) -> None:
        self.set_header(ReservedHeaderKey.RC, rc)

    def add_cookie(self, name: str, data: Any) -> None:
        """A cookie the server sets and the client echoes back in its reply."""
        jar = self.get_cookie_jar()
        if not jar:
            jar = {}
            self.set_cookie_jar(jar)
        jar[name] = data

    def get_cookie_jar(self) -> Optional[dict]:
        return self.get_header(ReservedHeaderKey.COOKIE_JAR, None)

    def set_cookie_jar(self, jar: Optional[dict]) -> None:
        self.set_header(ReservedHeaderKey.COOKIE_JAR, jar)

    def get_cookie(self, name: str, default: Any = None) -> Any:
        jar = self.get_cookie_jar()
        if not jar:
            return default
        return jar.get(name, default)

    def set_peer_props(self, props: dict) -> None:
        self.set_header(ReservedHeaderKey.PEER_PROPS, props)

    def get_peer_props(self) -> Optional[dict]:
        return self.get_header(ReservedHeaderKey.PEER_PROPS, None)

    def get_peer_prop(self, key: str, default: Any) -> Any:
        props = self.get_peer_props()
        if not isinstance(props, dict):
            return default
        return props.get(key, default)


def make_reply(rc: str, headers: Optional[dict] = None) -> Shareable:
    reply = Shareable()
    reply.set_return_code(rc)
    if headers and isinstance(headers, dict):
        for k, v in headers.items():
            reply.set_header(k, v)
    return reply


def make_copy(source: Shareable) -> Shareable:
    """A shallow copy with deep-copied headers: filters may then change headers (return code, cookies)
    without touching the original, while the (large) content is shared."""
    if not isinstance(source, Shareable):
        raise TypeError(f"source must be Shareable, but got {type(source)}")
    result = copy.copy(source)
    headers = source.get(ReservedHeaderKey.HEADERS)
    result[ReservedHeaderKey.HEADERS] = copy.deepcopy(headers) if headers else {}
    return result


# ---------------------------------------------------------------------------------------------
# nvflare.apis.dxo
# ---------------------------------------------------------------------------------------------


class DataKind:
    FL_MODEL = "FL_MODEL"
    WEIGHTS = "WEIGHTS"
    WEIGHT_DIFF = "WEIGHT_DIFF"
    METRICS = "METRICS"
    ANALYTIC = "ANALYTIC"
    COLLECTION = "COLLECTION"  # data is a dict of DXOs
    STATISTICS = "STATISTICS"
    PSI = "PSI"


class MetaKey(FLMetaKey):
    pass


# How a DXO sits in a shareable: FLARE's keys, so shareables built by either side read the same.
_KEY_KIND = "kind"
_KEY_DATA = "data"
_KEY_META = "meta"
_KEY_DXO = "DXO"
_CONTENT_TYPE_DXO = "DXO"


class DXO:
    """Data Exchange Object: a kind, a data dict and meta, the standard payload of a shareable."""

    def __init__(self, data_kind: str, data: Optional[dict], meta: Optional[dict] = None) -> None:
        self.data_kind = data_kind
        self.data = {} if data is None else data
        self.meta = {} if meta is None else meta
        err = self.validate()
        if err:
            raise ValueError(f"invalid DXO: {err}")

    def get_meta_prop(self, key: str, default: Any = None) -> Any:
        if self.meta and isinstance(self.meta, dict):
            return self.meta.get(key, default)
        return default

    def set_meta_prop(self, key: str, value: Any) -> None:
        if self.meta is None:
            self.meta = {}
        self.meta[key] = value

    def remove_meta_props(self, keys: list[str]) -> None:
        if self.meta and keys:
            for k in keys:
                self.meta.pop(k, None)

    def get_meta_props(self) -> dict:
        return self.meta

    def update_meta_props(self, meta: dict) -> None:
        self.meta.update(copy.deepcopy(meta))

    def _encode(self) -> dict:
        return {_KEY_KIND: self.data_kind, _KEY_DATA: self.data, _KEY_META: self.meta}

    def update_shareable(self, s: Shareable) -> Shareable:
        """Put this DXO into an existing shareable, keeping its headers (e.g. a task's cookies)."""
        s.set_header(ReservedHeaderKey.CONTENT_TYPE, _CONTENT_TYPE_DXO)
        s[_KEY_DXO] = self._encode()
        return s

    def to_shareable(self) -> Shareable:
        return self.update_shareable(Shareable())

    def validate(self) -> str:
        """An error text, or "" when valid."""
        if self.data is None:
            return "missing data"
        if not isinstance(self.data, dict):
            return f"invalid data: expect dict but got {type(self.data)}"
        if self.meta is not None and not isinstance(self.meta, dict):
            return f"invalid props: expect dict but got {type(self.meta)}"
        return ""

    def add_filter_history(self, filter_name: Union[str, list[str]]) -> None:
        if not filter_name:
            return
        hist = self.get_meta_prop(MetaKey.FILTER_HISTORY)
        if not hist:
            hist = []
            self.set_meta_prop(MetaKey.FILTER_HISTORY, hist)
        if isinstance(filter_name, str):
            hist.append(filter_name)
        elif isinstance(filter_name, list):
            hist.extend(filter_name)

    def get_filter_history(self) -> Optional[list]:
        return self.get_meta_prop(MetaKey.FILTER_HISTORY)


def from_shareable(s: Shareable) -> DXO:
    """The DXO in a shareable; ValueError (as FLARE) when the shareable holds none."""
    content_type = s.get_header(ReservedHeaderKey.CONTENT_TYPE)
    if not content_type or content_type != _CONTENT_TYPE_DXO:
        raise ValueError(f"the shareable is not a valid DXO - expect content_type DXO but got {content_type}")
    encoded = s.get(_KEY_DXO)
    if not encoded:
        raise ValueError("the shareable is not a valid DXO - missing content")
    if not isinstance(encoded, dict):
        raise ValueError(f"the shareable is not a valid DXO - should be encoded as dict but got {type(encoded)}")
    return DXO(data_kind=encoded.get(_KEY_KIND), data=encoded.get(_KEY_DATA), meta=encoded.get(_KEY_META))


def get_leaf_dxos(dxo: DXO, root_name: str = "") -> tuple[dict, list]:
    """({dotted path: leaf DXO}, [errors]) for a DXO or a COLLECTION of DXOs, nested."""
    result: dict[str, DXO] = {}
    errors: list[str] = []
    visited: set[int] = set()

    def walk(node: Any, name: str) -> None:
        if id(node) in visited:
            return
        visited.add(id(node))
        if not isinstance(node, DXO):
            errors.append(f"dxo '{name}' must be DXO but got {type(node)}")
        elif node.data_kind == DataKind.COLLECTION:
            if not isinstance(node.data, dict):
                errors.append(f"dxo '{name}' is a collection but data is {type(node.data)} - must be dict")
                return
            for k, v in node.data.items():
                walk(v, f"{name}.{k}")
        else:
            result[name] = node

    walk(dxo, root_name)
    return result, errors


# ---------------------------------------------------------------------------------------------
# nvflare.apis.signal
# ---------------------------------------------------------------------------------------------


class Signal:
    """An abort flag; a child counts as triggered when its parent is (a task's signal under the run's)."""

    def __init__(self, parent: Optional["Signal"] = None) -> None:
        self._value: Any = None
        self._trigger_time: Optional[float] = None
        self._triggered = False
        self._parent = parent

    def trigger(self, value: Any) -> None:
        self._value = value
        self._trigger_time = time.time()
        self._triggered = True

    @property
    def value(self) -> Any:
        return self._value

    @property
    def trigger_time(self) -> Optional[float]:
        return self._trigger_time

    def reset(self, value: Any = None) -> None:
        self._value = value
        self._trigger_time = None
        self._triggered = False

    @property
    def triggered(self) -> bool:
        if self._triggered:
            return True
        return self._parent.triggered if self._parent else False


# ---------------------------------------------------------------------------------------------
# nvflare.apis.fl_context
# ---------------------------------------------------------------------------------------------

MASK_STICKY = 1 << 0
MASK_PRIVATE = 1 << 1
V = "value"
M = "mask"

_update_lock = threading.Lock()


def is_sticky(mask: int) -> bool:
    return mask & MASK_STICKY > 0


def is_private(mask: int) -> bool:
    return mask & MASK_PRIVATE > 0


def make_mask(private: bool, sticky: bool) -> int:
    return (MASK_PRIVATE if private else 0) + (MASK_STICKY if sticky else 0)


def to_string(mask: int) -> str:
    return ("private:" if is_private(mask) else "public:") + ("sticky" if is_sticky(mask) else "non-sticky")


class FLContext:
    """Props passed between components during one call (an event, a task).

    fedray has no FLContextManager: a prop's sticky bit is kept (a later set_prop must agree with it,
    as in FLARE) but is not carried into later contexts; fedray's site builds each context with
    `put` (ENGINE, RUN_NUM = job id, IDENTITY_NAME, RUN_ABORT_SIGNAL, WORKSPACE_OBJECT, APP_ROOT...).
    """

    def __init__(self) -> None:
        self.model = None
        self.props: dict[str, dict] = {}
        self.logger = logging.getLogger(self.__class__.__name__)

    def get_prop_keys(self) -> list[str]:
        return list(self.props.keys())

    def public_key_exists(self, key: str) -> bool:
        return key in self.props and not is_private(self.props[key][M])

    def get_all_public_props(self) -> dict[str, Any]:
        with _update_lock:
            return {k: p[V] for k, p in self.props.items() if not is_private(p[M])}

    def set_prop(self, key: str, value: Any, private: bool = True, sticky: bool = True) -> bool:
        """False (with a warning, as FLARE) when the prop exists with other private/sticky bits."""
        if not isinstance(key, str):
            raise ValueError(f"prop key must be str, but got {type(key)}")
        mask = make_mask(private, sticky)
        with _update_lock:
            existing = self.props.get(key)
            if existing is not None and existing[M] != mask:
                self.logger.warning(
                    f"property '{key}' already exists with attributes {to_string(existing[M])}, "
                    f"cannot change to {to_string(mask)}")
                return False
            self.props[key] = {V: value, M: mask}
            return True

    def get_prop(self, key: str, default: Any = None) -> Any:
        with _update_lock:
            p = self.props.get(key)
            return p[V] if p is not None else default

    def get_custom_prop(self, key: str, default: Any = None) -> Any:
        props = self.get_prop(ReservedKey.CUSTOM_PROPS)
        if not props:
            return default
        return props.get(key, default)

    def set_custom_prop(self, key: str, value: Any) -> None:
        props = self.get_prop(ReservedKey.CUSTOM_PROPS)
        if not props:
            props = {}
            self.set_prop(ReservedKey.CUSTOM_PROPS, props, private=True, sticky=False)
        props[key] = value

    def get_prop_detail(self, key: str) -> Optional[dict]:
        with _update_lock:
            p = self.props.get(key)
            if p is None:
                return None
            return {V: p[V], "private": is_private(p[M]), "sticky": is_sticky(p[M])}

    def remove_prop(self, key: str, force_removal: bool = False) -> None:
        """Reserved ("__...") props stay unless forced: the system's own props must survive users."""
        if not isinstance(key, str):
            return
        if key.startswith("__") and not force_removal:
            return
        with _update_lock:
            self.props.pop(key, None)

    def put(self, key: str, value: Any, private: bool, sticky: bool) -> None:
        """Set a prop without the attribute check (how the system seeds a new context)."""
        self.props[key] = {V: value, M: make_mask(private, sticky)}

    def __str__(self) -> str:
        return " ".join(f"{k}: {type(p[V])}" for k, p in self.props.items())

    def _simple_get(self, key: str, default: Any = None) -> Any:
        p = self.props.get(key)
        return p[V] if p else default

    def get_engine(self, default: Any = None) -> Any:
        return self._simple_get(ReservedKey.ENGINE, default)

    def get_job_id(self, default: Any = None) -> Any:
        return self._simple_get(ReservedKey.RUN_NUM, default)

    def get_identity_name(self, default: str = "") -> str:
        return self._simple_get(ReservedKey.IDENTITY_NAME, default)

    def set_job_is_unsafe(self, value: bool = True) -> None:
        self.set_prop(ReservedKey.JOB_IS_UNSAFE, value, private=True, sticky=True)

    def is_job_unsafe(self) -> bool:
        return self.get_prop(ReservedKey.JOB_IS_UNSAFE, False)

    def get_run_abort_signal(self) -> Optional[Signal]:
        return self._simple_get(ReservedKey.RUN_ABORT_SIGNAL, None)

    def set_peer_context(self, ctx: "FLContext") -> None:
        self.put(ReservedKey.PEER_CTX, ctx, private=True, sticky=False)

    def get_peer_context(self) -> Optional["FLContext"]:
        return self._simple_get(ReservedKey.PEER_CTX, None)

    def set_public_props(self, metadata: dict) -> None:
        """Replace the public props (FLARE keeps only the private ones, sticky or not)."""
        self.props = {k: p for k, p in self.props.items() if is_private(p[M])}
        for key, value in metadata.items():
            self.set_prop(key, value, private=False, sticky=False)

    def sync_sticky(self) -> None:
        """No-op, as in FLARE (sticky props are always in sync)."""

    def __enter__(self) -> "FLContext":
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# nvflare.apis.workspace
# ---------------------------------------------------------------------------------------------


class Workspace:
    """A site's folders, FLARE's layout (`nvflare simulator -w ROOT` makes the same):

        ROOT/                        get_root_dir()
          startup/                   get_startup_kit_dir()
          local/                     get_site_config_dir()   (local/custom: get_site_custom_dir())
          <job_id>/                  get_run_dir(job_id)     (FLARE's simulator: job_id "simulate_job")
            app_<site_name>/         get_app_dir(job_id)
              config/                get_app_config_dir(job_id)
              custom/                get_app_custom_dir(job_id)
            log.txt, meta.json

    Unlike FLARE's, it does not require startup/ and local/ to exist: a fedray site has no
    provisioned startup kit, and nothing here reads them.
    """

    def __init__(self, root_dir: str, site_name: str = "", config_folder: str = "config") -> None:
        self.root_dir = root_dir
        self.site_name = site_name
        self.config_folder = config_folder

    def get_root_dir(self) -> str:
        return self.root_dir

    def get_startup_kit_dir(self) -> str:
        return os.path.join(self.root_dir, WorkspaceConstants.STARTUP_FOLDER_NAME)

    def get_site_config_dir(self) -> str:
        return os.path.join(self.root_dir, WorkspaceConstants.SITE_FOLDER_NAME)

    def get_site_custom_dir(self) -> str:
        return os.path.join(self.get_site_config_dir(), WorkspaceConstants.CUSTOM_FOLDER_NAME)

    def get_client_custom_dir(self) -> str:
        return self.get_site_custom_dir()

    def get_file_path_in_site_config(self, file_basename: Union[str, list[str]]) -> Optional[str]:
        """A list is tried in order; the first file that exists wins (e.g. x.json, then x.json.default)."""
        if isinstance(file_basename, str):
            return os.path.join(self.get_site_config_dir(), file_basename)
        if isinstance(file_basename, list):
            for name in file_basename:
                path = os.path.join(self.get_site_config_dir(), name)
                if os.path.exists(path):
                    return path
            return None
        raise ValueError(f"invalid file_basename '{file_basename}': must be str or List[str]")

    def get_file_path_in_startup(self, file_basename: str) -> str:
        return os.path.join(self.get_startup_kit_dir(), file_basename)

    def get_file_path_in_root(self, file_basename: str) -> str:
        return os.path.join(self.root_dir, file_basename)

    def get_log_file_path(self) -> str:
        return os.path.join(self.root_dir, WorkspaceConstants.LOG_FILE_NAME)

    def get_audit_file_path(self) -> str:
        return os.path.join(self.root_dir, WorkspaceConstants.AUDIT_LOG)

    def get_run_dir(self, job_id: str) -> str:
        return os.path.join(self.root_dir, WorkspaceConstants.WORKSPACE_PREFIX + str(job_id))

    def get_app_dir(self, job_id: str) -> str:
        return os.path.join(self.get_run_dir(job_id), WorkspaceConstants.APP_PREFIX + self.site_name)

    def get_app_log_file_path(self, job_id: str) -> str:
        return os.path.join(self.get_run_dir(job_id), WorkspaceConstants.LOG_FILE_NAME)

    def get_app_config_dir(self, job_id: str) -> str:
        return os.path.join(self.get_app_dir(job_id), self.config_folder)

    def get_app_custom_dir(self, job_id: str) -> str:
        return os.path.join(self.get_app_dir(job_id), WorkspaceConstants.CUSTOM_FOLDER_NAME)

    def get_job_meta_path(self, job_id: str) -> str:
        return os.path.join(self.get_run_dir(job_id), WorkspaceConstants.JOB_META_FILE)

    def get_client_app_config_file_path(self, job_id: str) -> str:
        return os.path.join(self.get_app_config_dir(job_id), WorkspaceConstants.CLIENT_APP_CONFIG)

    def get_server_app_config_file_path(self, job_id: str) -> str:
        return os.path.join(self.get_app_config_dir(job_id), WorkspaceConstants.SERVER_APP_CONFIG)


# ---------------------------------------------------------------------------------------------
# nvflare.apis.fl_component
# ---------------------------------------------------------------------------------------------


class FLAREPanic(RuntimeError):
    """A FLARE component's system_panic/task_panic: fedray has no runner to end the run on a fired
    FATAL_SYSTEM_ERROR, so the panic fails the task (and the site's run) by raising."""


def _log_prefix(fl_ctx: Optional[FLContext]) -> str:
    """FLARE's `[identity=site-1, run=job, task_name=train, ...]: ` prefix, so logs read the same."""
    if not fl_ctx:
        return ""
    items = [("identity", fl_ctx.get_identity_name()), ("run", fl_ctx.get_job_id() or "?")]
    wf = fl_ctx.get_prop(FLContextKey.WORKFLOW, None)
    if wf is not None:
        items.append(("wf", wf))
    peer = fl_ctx.get_peer_context()
    if isinstance(peer, FLContext):
        items.append(("peer", peer.get_identity_name() or "?"))
        items.append(("peer_run", peer.get_job_id() or "?"))
    reply = fl_ctx.get_prop(FLContextKey.REPLY, None)
    if isinstance(reply, Shareable):
        items.append(("peer_rc", reply.get_return_code(ReturnCode.OK)))
    for key, name in ((FLContextKey.TASK_NAME, "task_name"), (FLContextKey.TASK_ID, "task_id")):
        value = fl_ctx.get_prop(key, None)
        if value:
            items.append((name, value))
    return "[" + ", ".join(f"{k}={v}" for k, v in items) + "]: "


class FLComponent:
    """Base of FLARE's executors, filters and widgets: logging with the site's context, and events.

    `fire_event` reaches the engine's `fire_event` (fedray's `Engine` hands it to the site); the
    log methods keep FLARE's `fire_event` argument but fire no log events (FLARE's log-event
    receivers are not run by fedray).
    """

    def __init__(self) -> None:
        self._name = self.__class__.__name__
        self.logger = logging.getLogger(self._name)

    @property
    def name(self) -> str:
        return self._name

    def _logger(self) -> logging.Logger:
        # Subclasses that skip super().__init__() still log.
        logger = self.__dict__.get("logger")
        return logger if logger is not None else logging.getLogger(self.__class__.__name__)

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if not isinstance(event_type, str):
            raise TypeError(f"expect event_type to be str, but got {type(event_type)}")
        if not event_type:
            raise ValueError("event_type must be specified")
        if not isinstance(fl_ctx, FLContext):
            raise TypeError(f"expect fl_ctx to be FLContext, but got {type(fl_ctx)}")
        fl_ctx.set_prop(FLContextKey.EVENT_SCOPE, EventScope.LOCAL, private=True, sticky=False)
        fl_ctx.set_prop(FLContextKey.EVENT_ORIGIN, getattr(self, "_name", self.__class__.__name__),
                        private=True, sticky=False)
        engine = fl_ctx.get_engine()
        fire = getattr(engine, "fire_event", None)
        if callable(fire):
            fire(event_type, fl_ctx)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        pass

    def system_panic(self, reason: str, fl_ctx: FLContext) -> None:
        """FLARE fires FATAL_SYSTEM_ERROR; fedray fires it too (for handlers), then raises FLAREPanic."""
        fl_ctx.set_prop(FLContextKey.EVENT_DATA, reason, private=True, sticky=False)
        self.fire_event(EventType.FATAL_SYSTEM_ERROR, fl_ctx)
        raise FLAREPanic(f"{_log_prefix(fl_ctx)}system panic: {reason}")

    def task_panic(self, reason: str, fl_ctx: FLContext) -> None:
        raise FLAREPanic(f"{_log_prefix(fl_ctx)}task panic: {reason}")

    def log_debug(self, fl_ctx: Optional[FLContext], msg: str, fire_event: bool = False) -> None:
        self._logger().debug(_log_prefix(fl_ctx) + msg)

    def log_info(self, fl_ctx: Optional[FLContext], msg: str, fire_event: bool = False) -> None:
        self._logger().info(_log_prefix(fl_ctx) + msg)

    def log_warning(self, fl_ctx: Optional[FLContext], msg: str, fire_event: bool = True) -> None:
        self._logger().warning(_log_prefix(fl_ctx) + msg)

    def log_error(self, fl_ctx: Optional[FLContext], msg: str, fire_event: bool = True) -> None:
        self._logger().error(_log_prefix(fl_ctx) + msg)

    def log_critical(self, fl_ctx: Optional[FLContext], msg: str, fire_event: bool = True) -> None:
        self._logger().critical(_log_prefix(fl_ctx) + msg)

    def log_exception(self, fl_ctx: Optional[FLContext], msg: str, fire_event: bool = False) -> None:
        """The message, then the traceback being handled (called from an `except` block)."""
        logger = self._logger()
        logger.error(_log_prefix(fl_ctx) + msg)
        logger.error(traceback.format_exc())


# ---------------------------------------------------------------------------------------------
# nvflare.apis.executor
# ---------------------------------------------------------------------------------------------


class Executor(FLComponent, ABC):
    """Runs a site's tasks: fedray calls `execute` with the task's name and data."""

    def __init__(self) -> None:
        FLComponent.__init__(self)
        self.unsafe = False

    @abstractmethod
    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """The task's result; check `abort_signal.triggered` during long work."""


# ---------------------------------------------------------------------------------------------
# fedray's stand-in for FLARE's client engine (`fl_ctx.get_engine()`)
# ---------------------------------------------------------------------------------------------


class Engine:
    """What FLARE components ask of `fl_ctx.get_engine()`: the workspace, components by id, events."""

    def __init__(self, workspace: Workspace, components: Optional[dict[str, Any]] = None,
                 fire_event: Optional[Callable[[str, FLContext], None]] = None) -> None:
        self._workspace = workspace
        self._components = dict(components or {})
        self._fire_event = fire_event

    def get_workspace(self) -> Workspace:
        return self._workspace

    def get_component(self, component_id: str) -> Any:
        """None when there is no such component, as FLARE's engine."""
        return self._components.get(component_id)

    def get_all_components(self) -> dict[str, Any]:
        """Every component by id (FLARE's Learner.initialize gets them as `parts`)."""
        return dict(self._components)

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if self._fire_event is not None:
            self._fire_event(event_type, fl_ctx)
