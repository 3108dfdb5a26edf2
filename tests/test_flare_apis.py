"""fedray's versions of FLARE's executor-side APIs (fedray/flare/executor_api.py, model_api.py):
FLARE 2.4's behaviour and constant values, checked without NVFlare installed."""

import logging
import os
import re

import numpy as np
import pytest
import torch

from fedray.fl_model import AlgorithmConstants as FedrayAlgorithmConstants
from fedray.flare.executor_api import (
    DXO,
    DataKind,
    Engine,
    EventScope,
    EventType,
    Executor,
    FLAREPanic,
    FLComponent,
    FLContext,
    FLContextKey,
    MetaKey,
    ReservedHeaderKey,
    ReservedKey,
    ReturnCode,
    Shareable,
    Signal,
    Workspace,
    from_shareable,
    get_leaf_dxos,
    make_copy,
    make_reply,
)
from fedray.flare.model_api import (
    AlgorithmConstants,
    AppConstants,
    AppEventType,
    ModelLearnable,
    ModelLearnableKey,
    ModelName,
    PTModelPersistenceFormatManager,
    ValidateType,
    make_model_learnable,
    model_learnable_to_dxo,
    validate_model_learnable,
)


def site_context(name="site-1", job_id="job-7", engine=None, abort=None) -> FLContext:
    """A context as fedray's site seeds it (FLARE's FLContextManager.new_context puts the same keys)."""
    ctx = FLContext()
    ctx.put(ReservedKey.ENGINE, engine, private=True, sticky=False)
    ctx.put(ReservedKey.RUN_NUM, job_id, private=False, sticky=True)
    ctx.put(ReservedKey.IDENTITY_NAME, name, private=False, sticky=False)
    if abort is not None:
        ctx.put(ReservedKey.RUN_ABORT_SIGNAL, abort, private=True, sticky=True)
    return ctx


# --- Shareable --------------------------------------------------------------------------------


def test_shareable_headers_round_trip():
    s = Shareable()
    assert isinstance(s, dict) and s[ReservedHeaderKey.HEADERS] == {}
    assert s.get_header("missing", 5) == 5
    assert s.get_return_code() == ReturnCode.OK  # no rc header: OK, as FLARE
    s.set_header("k", [1, 2])
    s.set_return_code(ReturnCode.TASK_ABORTED)
    assert s.get_header("k") == [1, 2]
    assert s.get_return_code() == "TASK_ABORTED"
    assert s[ReservedHeaderKey.HEADERS][ReservedKey.RC] == "TASK_ABORTED"
    assert ReservedHeaderKey.HEADERS == "__headers__" and ReservedKey.RC == "__rc__"

    s.add_cookie("round", 3)
    s.add_cookie("model", "m")
    assert s.get_cookie_jar() == {"round": 3, "model": "m"}
    assert s.get_cookie("round") == 3 and s.get_cookie("nope", "d") == "d"
    s.set_cookie_jar({"x": 1})
    assert s.get_cookie("round") is None and s.get_cookie("x") == 1

    assert s.get_peer_prop("a", "dflt") == "dflt"
    s.set_peer_props({"a": 1})
    assert s.get_peer_props() == {"a": 1} and s.get_peer_prop("a", None) == 1

    s[ReservedHeaderKey.HEADERS] = "not a dict"
    with pytest.raises(ValueError):
        s.get_header("k")


def test_make_reply_and_make_copy():
    reply = make_reply(ReturnCode.EXECUTION_EXCEPTION, headers={"why": "boom"})
    assert isinstance(reply, Shareable)
    assert reply.get_return_code() == "EXECUTION_EXCEPTION"
    assert reply.get_header("why") == "boom"
    assert make_reply(ReturnCode.OK).get_return_code() == "OK"

    src = DXO(DataKind.WEIGHTS, {"w": [1.0]}).to_shareable()
    src.add_cookie("c", 1)
    dup = make_copy(src)
    dup.set_return_code(ReturnCode.ERROR)
    dup.add_cookie("c", 2)
    assert src.get_return_code() == ReturnCode.OK and src.get_cookie("c") == 1  # headers deep-copied
    assert dup["DXO"] is src["DXO"]  # content shared
    with pytest.raises(TypeError):
        make_copy({"not": "shareable"})


def test_return_codes_are_flares():
    for name in ("OK", "BAD_PEER_CONTEXT", "BAD_REQUEST_DATA", "BAD_TASK_DATA", "COMMUNICATION_ERROR", "ERROR",
                 "EXECUTION_EXCEPTION", "EXECUTION_RESULT_ERROR", "HANDLER_EXCEPTION", "MISSING_PEER_CONTEXT",
                 "RUN_MISMATCH", "TASK_ABORTED", "TASK_DATA_FILTER_ERROR", "TASK_RESULT_FILTER_ERROR",
                 "TASK_UNKNOWN", "TASK_UNSUPPORTED", "TOPIC_UNKNOWN", "MODEL_UNRECOGNIZED", "VALIDATE_TYPE_UNKNOWN",
                 "EMPTY_RESULT", "UNSAFE_JOB", "SERVER_NOT_READY", "SERVICE_UNAVAILABLE"):
        assert getattr(ReturnCode, name) == name
    assert FLContextKey.TASK_NAME == "__task_name__" and FLContextKey.CURRENT_RUN == "__run_num__"
    assert FLContextKey.APP_ROOT == "__app_root__" and FLContextKey.WORKSPACE_OBJECT == "__workspace_object__"
    assert FLContextKey.CLIENT_NAME == "__client_name__" and ReservedKey.ENGINE == "__engine__"
    assert FLContextKey.RUNNER == "__runner__" and FLContextKey.WORKSPACE_ROOT == "__workspace_root__"
    assert EventScope.LOCAL == "local" and EventScope.FEDERATION == "federation"
    assert EventType.START_RUN == "_start_run" and EventType.END_RUN == "_end_run"
    assert EventType.ABORT_TASK == "_abort_task" and EventType.BEFORE_TASK_EXECUTION == "_before_task_execution"


# --- DXO --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [DataKind.WEIGHTS, DataKind.WEIGHT_DIFF, DataKind.METRICS])
def test_dxo_shareable_round_trip(kind):
    data = {"a": np.arange(3.0), "b": 0.5}
    dxo = DXO(kind, data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 12})
    s = dxo.to_shareable()
    assert s.get_header(ReservedHeaderKey.CONTENT_TYPE) == "DXO"
    back = from_shareable(s)
    assert back.data_kind == kind
    assert back.data["b"] == 0.5 and np.array_equal(back.data["a"], data["a"])
    assert back.get_meta_prop("NUM_STEPS_CURRENT_ROUND") == 12
    assert back.get_meta_prop("missing", "d") == "d"


def test_dxo_meta_and_filter_history():
    dxo = DXO(DataKind.WEIGHTS, {"w": 1})
    assert dxo.get_meta_props() == {} and dxo.get_filter_history() is None
    dxo.set_meta_prop(MetaKey.CURRENT_ROUND, 2)
    dxo.set_meta_prop("x", 1)
    dxo.remove_meta_props(["x", "not-there"])
    assert dxo.get_meta_props() == {"current_round": 2}
    dxo.add_filter_history("ExcludeVars")
    dxo.add_filter_history(["A", "B"])
    dxo.add_filter_history("")
    assert dxo.get_filter_history() == ["ExcludeVars", "A", "B"]
    assert dxo.get_meta_prop("filter_history") == ["ExcludeVars", "A", "B"]


def test_dxo_validation_and_update_shareable_keeps_headers():
    with pytest.raises(ValueError):
        DXO(DataKind.WEIGHTS, data=[1, 2])
    with pytest.raises(ValueError):
        DXO(DataKind.WEIGHTS, data={}, meta="meta")
    assert DXO(DataKind.METRICS, None).data == {}
    task = Shareable()
    task.add_cookie("round", 4)
    out = DXO(DataKind.WEIGHT_DIFF, {"w": 1.0}).update_shareable(task)
    assert out is task and out.get_cookie("round") == 4
    assert from_shareable(out).data_kind == "WEIGHT_DIFF"


def test_dxo_collection():
    inner = {"model": DXO(DataKind.WEIGHTS, {"w": 1}), "stats": DXO(DataKind.METRICS, {"acc": 0.9})}
    coll = DXO(DataKind.COLLECTION, inner, meta={"m": 1})
    back = from_shareable(coll.to_shareable())
    assert back.data_kind == DataKind.COLLECTION
    assert back.data["stats"].data == {"acc": 0.9}
    leaves, errors = get_leaf_dxos(back, "root")
    assert errors == [] and sorted(leaves) == ["root.model", "root.stats"]
    _, errors = get_leaf_dxos(DXO(DataKind.COLLECTION, {"bad": 3}), "r")
    assert errors and "r.bad" in errors[0]


def test_from_shareable_rejects_non_dxo():
    plain = Shareable()
    plain["weights"] = {"w": 1}
    with pytest.raises(ValueError, match="expect content_type DXO"):
        from_shareable(plain)
    missing = Shareable()
    missing.set_header(ReservedHeaderKey.CONTENT_TYPE, "DXO")
    with pytest.raises(ValueError, match="missing content"):
        from_shareable(missing)
    wrong = Shareable()
    wrong.set_header(ReservedHeaderKey.CONTENT_TYPE, "DXO")
    wrong["DXO"] = [1]
    with pytest.raises(ValueError, match="encoded as dict"):
        from_shareable(wrong)


# --- Signal -----------------------------------------------------------------------------------


def test_signal_trigger_reset_and_parent():
    run = Signal()
    task = Signal(parent=run)
    assert not run.triggered and not task.triggered and task.trigger_time is None
    run.trigger("abort run")
    assert task.triggered and task.value is None  # the parent's state, not its value
    assert run.value == "abort run" and run.trigger_time is not None
    run.reset()
    assert not task.triggered and run.trigger_time is None
    task.trigger(True)
    assert task.triggered and not run.triggered  # a child does not trigger its parent
    task.reset("again")
    assert not task.triggered and task.value == "again"


# --- FLContext --------------------------------------------------------------------------------


def test_fl_context_props_and_identity():
    abort = Signal()
    engine = Engine(Workspace("/ws", "site-1"))
    ctx = site_context("site-2", "job-9", engine=engine, abort=abort)
    assert ctx.get_identity_name() == "site-2" and ctx.get_job_id() == "job-9"
    assert ctx.get_engine() is engine and ctx.get_run_abort_signal() is abort
    assert FLContext().get_identity_name() == "" and FLContext().get_job_id() is None

    assert ctx.set_prop("lr", 0.1, private=False, sticky=False)
    assert ctx.get_prop("lr") == 0.1 and ctx.get_prop("nope", 3) == 3
    assert not ctx.set_prop("lr", 0.2, private=True, sticky=False)  # other attributes: refused, as FLARE
    assert ctx.get_prop("lr") == 0.1
    assert ctx.set_prop("lr", 0.2, private=False, sticky=False)
    ctx.set_prop("secret", "s")  # private, sticky by default
    assert ctx.get_prop_detail("secret") == {"value": "s", "private": True, "sticky": True}
    public = ctx.get_all_public_props()
    assert public["lr"] == 0.2 and public[ReservedKey.IDENTITY_NAME] == "site-2"
    assert "secret" not in public and ReservedKey.ENGINE not in public
    assert ctx.public_key_exists("lr") and not ctx.public_key_exists("secret")
    with pytest.raises(ValueError):
        ctx.set_prop(3, "x")

    ctx.set_custom_prop("k", "v")
    assert ctx.get_custom_prop("k") == "v" and ctx.get_custom_prop("x", 1) == 1
    ctx.remove_prop(ReservedKey.IDENTITY_NAME)  # reserved: kept unless forced
    assert ctx.get_identity_name() == "site-2"
    ctx.remove_prop(ReservedKey.IDENTITY_NAME, force_removal=True)
    assert ctx.get_identity_name() == ""
    ctx.set_public_props({"peer_lr": 1})
    assert "lr" not in ctx.get_prop_keys() and ctx.get_prop("peer_lr") == 1 and ctx.get_prop("secret") == "s"
    with ctx as same:
        assert same is ctx


# --- Workspace and Engine ---------------------------------------------------------------------


def test_workspace_paths_follow_flares_layout(tmp_path):
    root = str(tmp_path)
    ws = Workspace(root, "site-1")
    assert ws.get_root_dir() == root
    assert ws.get_run_dir("simulate_job") == os.path.join(root, "simulate_job")
    assert ws.get_app_dir("simulate_job") == os.path.join(root, "simulate_job", "app_site-1")
    assert ws.get_app_config_dir("j") == os.path.join(root, "j", "app_site-1", "config")
    assert ws.get_app_custom_dir("j") == os.path.join(root, "j", "app_site-1", "custom")
    assert ws.get_site_config_dir() == os.path.join(root, "local")
    assert ws.get_site_custom_dir() == os.path.join(root, "local", "custom")
    assert ws.get_startup_kit_dir() == os.path.join(root, "startup")
    assert ws.get_job_meta_path("j") == os.path.join(root, "j", "meta.json")
    assert ws.get_app_log_file_path("j") == os.path.join(root, "j", "log.txt")
    assert ws.get_client_app_config_file_path("j").endswith(os.path.join("config", "config_fed_client.json"))
    assert Workspace(root, "s", config_folder="conf").get_app_config_dir("j").endswith(os.path.join("app_s", "conf"))
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "resources.json.default").write_text("{}")
    assert ws.get_file_path_in_site_config(["resources.json", "resources.json.default"]).endswith(".default")


def test_engine_components_and_events():
    fired = []
    ws = Workspace("/ws", "site-1")
    model = object()
    engine = Engine(ws, {"persistor": model}, fire_event=lambda e, ctx: fired.append((e, ctx.get_identity_name())))
    assert engine.get_workspace() is ws
    assert engine.get_component("persistor") is model and engine.get_component("nope") is None
    ctx = site_context(engine=engine)

    class Widget(FLComponent):
        pass

    widget = Widget()
    widget.fire_event("custom_event", ctx)
    assert fired == [("custom_event", "site-1")]
    assert ctx.get_prop(FLContextKey.EVENT_SCOPE) == EventScope.LOCAL
    assert ctx.get_prop(FLContextKey.EVENT_ORIGIN) == "Widget" == widget.name == widget._name
    Engine(ws).fire_event("ignored", ctx)  # no callable: nothing happens
    widget.fire_event("no_engine", site_context(engine=None))  # no engine: nothing happens, no error
    with pytest.raises(TypeError):
        widget.fire_event("e", {"not": "a context"})

    with pytest.raises(FLAREPanic, match="disk full"):
        widget.system_panic("disk full", ctx)
    assert fired[-1][0] == EventType.FATAL_SYSTEM_ERROR
    assert ctx.get_prop(FLContextKey.EVENT_DATA) == "disk full"
    with pytest.raises(RuntimeError, match="bad data"):
        widget.task_panic("bad data", ctx)


def test_fl_component_logs_with_site_identity(caplog):
    class Trainer(FLComponent):
        pass

    ctx = site_context("site-3", "job-1")
    ctx.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
    with caplog.at_level(logging.DEBUG, logger="Trainer"):
        Trainer().log_info(ctx, "round done")
        Trainer().log_warning(ctx, "slow")
        Trainer().log_debug(None, "no context")
        try:
            raise KeyError("missing")
        except KeyError:
            Trainer().log_exception(ctx, "failed")
    records = [r for r in caplog.records if r.name == "Trainer"]
    assert records[0].levelno == logging.INFO
    assert records[0].getMessage() == "[identity=site-3, run=job-1, task_name=train]: round done"
    assert records[1].levelno == logging.WARNING and "site-3" in records[1].getMessage()
    assert records[2].getMessage() == "no context"
    assert "failed" in records[3].getMessage() and "KeyError" in records[4].getMessage()


# --- Executor ---------------------------------------------------------------------------------


class DoublingExecutor(Executor):
    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        if task_name != AppConstants.TASK_TRAIN:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        self.log_info(fl_ctx, f"doubling {len(dxo.data)} weights")
        out = DXO(DataKind.WEIGHTS, {k: v * 2 for k, v in dxo.data.items()},
                  meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 1, MetaKey.CURRENT_ROUND: dxo.get_meta_prop("current_round")})
        return out.to_shareable()


def test_executor_round_trip():
    with pytest.raises(TypeError):
        Executor()  # abstract
    executor = DoublingExecutor()
    assert executor.unsafe is False and executor.name == "DoublingExecutor"
    run_abort = Signal()
    ctx = site_context(abort=run_abort)
    task = DXO(DataKind.WEIGHTS, {"w": np.ones(2), "b": np.array([3.0])}, meta={"current_round": 5}).to_shareable()

    result = executor.execute("train", task, ctx, Signal(parent=run_abort))
    assert result.get_return_code() == ReturnCode.OK
    dxo = from_shareable(result)
    assert np.array_equal(dxo.data["w"], [2.0, 2.0]) and np.array_equal(dxo.data["b"], [6.0])
    assert dxo.get_meta_prop(MetaKey.CURRENT_ROUND) == 5

    assert executor.execute("validate", task, ctx, Signal()).get_return_code() == ReturnCode.TASK_UNKNOWN
    assert executor.execute("train", Shareable(), ctx, Signal()).get_return_code() == ReturnCode.BAD_TASK_DATA
    run_abort.trigger(True)
    assert executor.execute("train", task, ctx, Signal(parent=run_abort)).get_return_code() == "TASK_ABORTED"


# --- Model learnables and the PyTorch persistence format --------------------------------------


def test_model_learnable_round_trip():
    weights = {"fc.weight": np.eye(2), "fc.bias": np.zeros(2)}
    ml = make_model_learnable(weights, {"epoch": 3})
    assert isinstance(ml, ModelLearnable) and isinstance(ml, dict)
    assert validate_model_learnable(ml) == "" and not ml.is_empty()
    assert make_model_learnable({}, {}).is_empty()
    dxo = model_learnable_to_dxo(ml)
    assert dxo.data_kind == DataKind.WEIGHTS and dxo.data is weights and dxo.get_meta_prop("epoch") == 3
    back = from_shareable(dxo.to_shareable())
    again = make_model_learnable(back.data, back.meta)
    assert np.array_equal(again[ModelLearnableKey.WEIGHTS]["fc.weight"], np.eye(2))

    assert "missing meta" in validate_model_learnable(ModelLearnable(weights={}))
    assert "expect Model type" in validate_model_learnable({"weights": {}, "meta": {}})
    with pytest.raises(ValueError):
        model_learnable_to_dxo(ModelLearnable(meta={}))


def test_pt_persistence_manager_round_trip():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    state = {k: v.clone() for k, v in net.state_dict().items()}

    # As FLARE's, the manager works on the dict it is given (update() writes into it).
    plain = PTModelPersistenceFormatManager(net.state_dict(), default_train_conf={"train": {"model": "net"}})
    ml = plain.to_model_learnable(exclude_vars=re.compile("num_batches_tracked"))
    weights = ml[ModelLearnableKey.WEIGHTS]
    assert "1.num_batches_tracked" not in weights and isinstance(weights["0.weight"], np.ndarray)
    assert np.allclose(weights["0.weight"], state["0.weight"].numpy())

    learned = {k: v + 1.0 for k, v in weights.items() if k.startswith("0.")}  # a partial update
    plain.update(make_model_learnable(learned, {"round": 2}))
    saved = plain.to_persistence_dict()
    assert list(saved) == ["model", "meta_props", "train_conf"]
    assert saved["meta_props"] == {"round": 2} and saved["train_conf"] == {"train": {"model": "net"}}
    assert all(isinstance(v, torch.Tensor) for v in saved["model"].values())
    assert torch.allclose(saved["model"]["0.weight"], state["0.weight"] + 1.0)
    assert torch.equal(saved["model"]["1.running_var"], state["1.running_var"])  # not learned: kept
    net.load_state_dict(saved["model"])

    # The saved form read back; other keys kept, processed (e.g. encrypted) weights passed through.
    saved["epoch"] = 7
    saved["meta_props"] = {MetaKey.PROCESSED_KEYS: {"0.bias": True}}
    saved["model"]["0.bias"] = b"encrypted"
    reread = PTModelPersistenceFormatManager(saved)
    assert reread.get_processed_keys() == {"0.bias": True}
    assert reread.train_conf == {"train": {"model": "net"}} and reread.other_props == {"epoch": 7}
    ml2 = reread.to_model_learnable(None)
    assert ml2[ModelLearnableKey.WEIGHTS]["0.bias"] == b"encrypted"
    assert reread.to_persistence_dict()["epoch"] == 7

    keep = PTModelPersistenceFormatManager({"w": torch.ones(2, dtype=torch.bfloat16)}, allow_numpy_conversion=False)
    assert isinstance(keep.to_model_learnable(None)[ModelLearnableKey.WEIGHTS]["w"], torch.Tensor)
    bf16 = PTModelPersistenceFormatManager({"w": torch.ones(2, dtype=torch.bfloat16)})
    assert bf16.to_model_learnable(None)[ModelLearnableKey.WEIGHTS]["w"].dtype == np.float32
    assert PTModelPersistenceFormatManager.get_persist_model_format() == "pt_checkpoint"
    with pytest.raises(TypeError):
        PTModelPersistenceFormatManager([1, 2])
    with pytest.raises(ValueError):
        plain.update({"weights": {}})


# --- Constants, as FLARE 2.4's source spells them ----------------------------------------------


def test_app_constants_match_flare():
    assert AppConstants.TASK_TRAIN == "train"
    assert AppConstants.TASK_SUBMIT_MODEL == "submit_model"
    assert AppConstants.TASK_VALIDATION == "validate"
    assert AppConstants.TASK_GET_WEIGHTS == "get_weights"
    assert AppConstants.TASK_END_RUN == "_end_run_"
    assert AppConstants.CURRENT_ROUND == "current_round"
    assert AppConstants.NUM_ROUNDS == "num_rounds"
    assert AppConstants.START_ROUND == "start_round"
    assert AppConstants.MODEL_OWNER == "_model_owner_"  # FLARE 2.4: `MODEL_OWNER = "_model_owner_"`
    assert AppConstants.VALIDATION_RESULT == "_validation_result_"
    assert AppConstants.DEFAULT_PERSISTOR_ID == "persistor"
    assert AppConstants.PARTICIPATING_CLIENTS == "_particpating_clients_"
    assert AppConstants.SUBMIT_MODEL_NAME == MetaKey.SUBMIT_MODEL_NAME == "submit_model_name"
    assert ModelName.BEST_MODEL == "best_model" and ModelName.FINAL_MODEL == "final_model"
    assert ValidateType.BEFORE_TRAIN_VALIDATE == "before_train_validate"
    assert ValidateType.MODEL_VALIDATE == "model_validate"
    assert AppEventType.ROUND_STARTED == "_round_started"
    assert AppEventType.BEFORE_SHAREABLE_TO_LEARNABLE == "_before_model_update"
    assert AlgorithmConstants is FedrayAlgorithmConstants
    assert AlgorithmConstants.SCAFFOLD_CTRL_DIFF == "scaffold_c_diff"
    assert AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL == "scaffold_c_global"


def test_a_jobs_model_locator_finds_the_server_models_where_flares_persistor_leaves_them(tmp_path):
    """hello-pt's PTModelLocator shape: it reads FL_global_model.pt from the server's app folder."""
    from fedray.flare.executor_api import DXO, DataKind, Engine, FLContext, ReservedKey, Workspace
    from fedray.flare.model_api import ModelLocator, PTModelPersistenceFormatManager, model_learnable_to_dxo
    from fedray.flare.nvflare_alias import ALIASES
    from fedray.flare.server_models import locate_models, persist_global_models

    # Served where hello-pt imports it from (the alias is installed in fedray's actors only, not here).
    assert ALIASES["nvflare.app_common.abstract.model_locator"] == "fedray.flare.model_api"

    class Locator(ModelLocator):
        def get_model_names(self, fl_ctx):
            return ["server", "missing", "metrics"]

        def locate_model(self, name, fl_ctx):
            app_dir = fl_ctx.get_engine().get_workspace().get_app_dir(fl_ctx.get_job_id())
            if name == "missing":
                return None
            if name == "metrics":
                return DXO(DataKind.METRICS, {"acc": 1.0})
            data = torch.load(os.path.join(app_dir, "FL_global_model.pt"))
            return model_learnable_to_dxo(PTModelPersistenceFormatManager(data).to_model_learnable(None))

    last = {"w": np.arange(4, dtype=np.float32), "b": np.ones(2, dtype=np.float32)}
    best = {"w": np.zeros(4, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
    workspace = Workspace(str(tmp_path), "server")
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.ENGINE, Engine(workspace, {}), private=True, sticky=False)
    fl_ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=False, sticky=False)
    persist_global_models(workspace.get_app_dir("job-1"), last, best)
    assert set(torch.load(tmp_path / "job-1" / "app_server" / "best_FL_global_model.pt")["model"]) == {"w", "b"}

    with pytest.raises(TypeError, match=r"locate_model\('metrics'\) returned METRICS"):
        locate_models(Locator(), fl_ctx, "server: app")
    Locator.get_model_names = lambda self, fl_ctx: ["server", "missing"]
    found, missing = locate_models(Locator(), fl_ctx, "server: app")
    assert list(found) == ["SRV_server"] and all(np.array_equal(found["SRV_server"][k], last[k]) for k in last)
    assert missing == ["server: app: locate_model('missing') found no model; cross-site evaluation skips it"]
