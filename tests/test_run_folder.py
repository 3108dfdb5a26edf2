"""A run folder under stress: a full file system, damaged files, hostile files (issue 22, items 4-6).

The full file system is a real one: a small tmpfs mounted in a private user and mount namespace
(`unshare`), never a mock; the damaged and hostile folders are real runs' folders, then damaged.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedray import JobFailed, load_config, run_job
from fedray.records import checkpoint
from fedray.records.atomic import write_atomic
from fedray.records.checkpoint import ResumeError, read_state_file
from fedray.records.manifest import MANIFEST
from fedray.records.weights_only import NotPlainData, dumps, from_saved, load, to_saved
from tests.small_fs import FULL_THEN_RESUME, small_fs_or_skip

REPO = Path(__file__).resolve().parent.parent
PRE_LAYOUT_RUN = REPO / "tests" / "fixtures" / "pre_layout_run"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
SCAFFOLD = ("algorithm=scaffold", "rounds=3", "workflows.cross_site_validate.enabled=false")


# -- a small file system --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_fs(tmp_path_factory):
    return small_fs_or_skip(tmp_path_factory.mktemp("probe"))


FILL = """
import os, sys
from pathlib import Path
from fedray.records.atomic import DiskFull, append_line, write_atomic
folder = Path(sys.argv[1])
write_atomic(folder / "kept.json", b"old")
append_line(folder / "log.jsonl", "line 1")
results = []
for attempt in (lambda: write_atomic(folder / "kept.json", b"x" * 200_000),
                lambda: write_atomic(folder / "fresh.pt", b"x" * 200_000),
                lambda: append_line(folder / "log.jsonl", "y" * 200_000)):
    try:
        attempt()
        results.append("written")
    except DiskFull as err:
        results.append(str(err))
print(repr(results))
print(repr(((folder / "kept.json").read_bytes(), (folder / "log.jsonl").read_bytes(), sorted(os.listdir(folder)))))
"""


def test_writes_on_a_full_file_system_keep_the_old_file_and_leave_no_temporary(small_fs, tmp_path):
    mount = tmp_path / "small"
    done = small_fs(mount, "96k", sys.executable, "-c", FILL, str(mount), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    results, (kept, log, names) = [eval(line) for line in done.stdout.strip().splitlines()]
    for message in results:
        assert message.startswith(f"no space left on the file system of {mount}/") and "bytes free)" in message
    assert "kept.json" in results[0] and "fresh.pt" in results[1] and "log.jsonl" in results[2]
    assert kept == b"old" and log == b"line 1\n"  # the old bytes, and no half line
    assert names == ["kept.json", "log.jsonl"]  # no temporary left behind


def test_write_atomic_makes_files_others_can_read(tmp_path):
    write_atomic(tmp_path / "a" / "summary.json", b"{}")
    old = os.umask(0o022)
    os.umask(old)
    assert (tmp_path / "a" / "summary.json").stat().st_mode & 0o777 == 0o666 & ~old
    assert os.listdir(tmp_path / "a") == ["summary.json"]


def _base(tiny_cifar: str, *extra: str) -> list[str]:
    """conftest's job_config overrides, for a job started on the command line."""
    return [f"data.root={tiny_cifar}", "data.download=false", "data.check_integrity=false", "num_clients=3",
            "lr=0.05", "local_epochs=2", "eval_batch_size=500", *extra]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_full_disk_ends_the_run_in_one_line_and_resume_gives_the_undisturbed_bits(small_fs, job_config, tiny_cifar,
                                                                                   tmp_path):
    extra = ("rounds=3", "workflows.cross_site_validate.enabled=false")
    run_job(job_config(*extra), tmp_path / "straight", on_event=lambda e: None)
    model_size = (tmp_path / "straight" / "models" / "FL_global_model.pt").stat().st_size
    # Room for round 0 (the global and best models) and not for round 1 as well (their new versions,
    # while the old ones are kept): the disk fills in round 1 or 2.
    free = 3 * model_size + 64 * 1024
    out = tmp_path / "out"
    out.mkdir()
    done = small_fs(tmp_path / "small", "16m", sys.executable, "-c", FULL_THEN_RESUME, str(tmp_path / "small"), str(out),
                    str(free), *_base(tiny_cifar, *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    code, stdout, stderr = result["first"]
    assert code == 1, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("fedray:")]
    assert len(errors) == 1 and "Traceback" not in stderr + stdout, stderr[-3000:]
    assert errors[0].startswith(f"fedray: no space left on the file system of {result['run']}/")
    assert "bytes free)" in errors[0] and f"free space, then resume={result['run']} continues it" in errors[0]
    # The last good checkpoint is whole: its manifest's files are there with their digests.
    failed = out / "after_failure"
    manifest = json.loads((failed / MANIFEST).read_text())
    assert manifest["round"] in (0, 1) and f"round {manifest['round'] + 1} is whole" in errors[0]
    for name, entry in manifest["files"].items():
        versions = [failed / name, (failed / name).with_name(Path(name).stem + ".prev.pt")]
        assert entry["sha256"] in {hashlib.sha256(p.read_bytes()).hexdigest() for p in versions if p.is_file()}
    assert not list(failed.rglob("*.tmp")), "a temporary file was left behind"
    code, stdout, stderr = result["second"]
    assert code == 0, stderr[-3000:]
    summary = json.loads((out / "resumed" / "summary.json").read_text())
    assert summary["status"] == "completed" and [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    ours = torch.load(out / "resumed" / "models" / "FL_global_model.pt", weights_only=True)["model"]
    theirs = torch.load(tmp_path / "straight" / "models" / "FL_global_model.pt", weights_only=True)["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


# -- damaged run folders --------------------------------------------------------------------------------

class _StopAfter:
    def __init__(self, last_round):
        self.last_round = last_round

    def __call__(self, event):
        if event["type"] == "round" and event["round"] == self.last_round:
            raise KeyboardInterrupt  # Ctrl-C, as the driver reports the round


@pytest.fixture(scope="module")
def stopped_run(job_config, tmp_path_factory, ray_session):
    """SCAFFOLD on 3 sites, stopped after round 1 of 3: models, states and both manifests on disk."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(JobFailed, match="interrupted"):
        run_job(job_config(*SCAFFOLD), run_dir, on_event=_StopAfter(1))
    return run_dir


def _copy(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


def _flip_a_bit(path: Path, offset_from_end: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGES = {
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "empty": lambda path: path.write_bytes(b""),
    "bit-flipped": _flip_a_bit,
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("name", ["models/FL_global_model.pt", "checkpoint/algorithm_state.pt",
                                  "checkpoint/site_states/site-1.pt"])
def test_a_damaged_checkpoint_file_falls_back_to_the_round_before_and_says_so(stopped_run, tmp_path, name, damage):
    run_dir = _copy(stopped_run, tmp_path / "run")
    intact = checkpoint.load(run_dir)
    assert intact["next_round"] == 2 and intact["warning"] is None
    DAMAGES[damage](run_dir / name)
    saved = checkpoint.load(run_dir)
    assert saved["next_round"] == 1  # round 0's files, each in the version round 0 wrote
    assert str(run_dir / name) in saved["warning"] and "going on from the round before it" in saved["warning"]
    assert "\n" not in saved["warning"]
    assert [r["round"] for r in saved["summary"]["rounds"]] == [0]
    c0 = read_state_file(stopped_run / "checkpoint" / "algorithm_state.prev.pt")["state"]["c"]
    assert all(np.array_equal(saved["algorithm_state"]["c"][k], c0[k]) for k in c0)
    checkpoint.restore(saved)  # the versions read are under their own names again, the damaged file gone
    assert json.loads((run_dir / MANIFEST).read_text())["round"] == 0
    again = checkpoint.load(run_dir)
    assert again["next_round"] == 1 and again["warning"] is None


def test_a_checkpoint_file_of_another_round_is_found_by_its_digest(stopped_run, tmp_path):
    run_dir = _copy(stopped_run, tmp_path / "run")
    shutil.copy(run_dir / "checkpoint" / "algorithm_state.prev.pt", run_dir / "checkpoint" / "algorithm_state.pt")
    saved = checkpoint.load(run_dir)  # round 0's state under round 1's name: round 1 is not whole
    assert saved["next_round"] == 1 and "algorithm_state.pt does not have the sha256" in saved["warning"]


def test_a_damaged_file_without_a_good_earlier_version_is_refused_in_one_line(stopped_run, tmp_path):
    run_dir = _copy(stopped_run, tmp_path / "run")
    for path in (run_dir / "models" / "FL_global_model.pt", run_dir / "models" / "FL_global_model.prev.pt"):
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ResumeError) as refused:
        checkpoint.load(run_dir)
    message = str(refused.value)
    assert message.startswith(f"resume={run_dir}: {run_dir}/models/FL_global_model.pt has 1000 bytes") and "\n" not in message
    assert "no earlier round's checkpoint is whole" in message


def test_a_torn_last_line_of_the_rounds_log_is_dropped_and_mended(stopped_run, tmp_path):
    run_dir = _copy(stopped_run, tmp_path / "run")
    log = run_dir / "rounds.jsonl"
    whole = log.read_text()
    log.write_text(whole + '{"round": 2, "glo')  # a stop in the middle of round 2's append
    saved = checkpoint.load(run_dir)
    assert [r["round"] for r in saved["summary"]["rounds"]] == [0, 1]
    checkpoint.restore(saved)
    assert log.read_text() == "".join(json.dumps(json.loads(line)) + "\n" for line in whole.splitlines())
    lines = whole.splitlines()
    log.write_text(lines[0][:-5] + "\n" + lines[1] + "\n")  # a damaged line that is not the last
    with pytest.raises(ResumeError, match=f"{log} line 1 is not JSON"):
        checkpoint.load(run_dir)


def test_a_damaged_file_of_a_folder_from_before_the_manifest_is_refused_naming_it(tmp_path):
    run_dir = _copy(PRE_LAYOUT_RUN, tmp_path / "old")
    path = run_dir / "checkpoint" / "site_states" / "site-2.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ResumeError) as refused:
        checkpoint.load(run_dir)
    assert str(refused.value).startswith(f"resume={run_dir}: cannot read {path} (")


@pytest.mark.usefixtures("ray_session")
def test_a_run_resumed_from_the_round_before_a_damaged_file_ends_with_the_undisturbed_bits(stopped_run, job_config,
                                                                                          tmp_path):
    run_dir = _copy(stopped_run, tmp_path / "run")
    _flip_a_bit(run_dir / "models" / "FL_global_model.pt")
    summary = run_job(load_config([f"resume={run_dir}"]), tmp_path / "ignored", on_event=lambda e: None)
    assert summary["status"] == "completed" and [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    run_job(job_config(*SCAFFOLD), tmp_path / "straight", on_event=lambda e: None)
    ours = torch.load(run_dir / "models" / "FL_global_model.pt", weights_only=True)["model"]
    theirs = torch.load(tmp_path / "straight" / "models" / "FL_global_model.pt", weights_only=True)["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    for site in ("site-1", "site-2", "site-3"):
        mine = read_state_file(run_dir / "checkpoint" / "site_states" / f"{site}.pt")
        straight = read_state_file(tmp_path / "straight" / "checkpoint" / "site_states" / f"{site}.pt")
        assert mine["round"] == straight["round"] == 2
        assert all(np.array_equal(mine["state"][k], straight["state"][k]) for k in straight["state"])


# -- hostile run folders --------------------------------------------------------------------------------

class _Payload:
    """What a crafted checkpoint holds: unpickling it would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(path: Path, value) -> None:
    """Replace a checkpoint file by `value` pickled, and list its digest in the manifest as a forger would."""
    torch.save(value, path)
    run_dir = _run_of(path)
    manifest_path = run_dir / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        name = path.relative_to(run_dir).as_posix()
        manifest["files"][name].update(size=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
        manifest_path.write_text(json.dumps(manifest))


def _run_of(path: Path) -> Path:
    return next(parent for parent in path.parents if (parent / "summary.json").is_file())


@pytest.mark.parametrize("folder", ["new", "old"])
@pytest.mark.parametrize("name", ["checkpoint/site_states/site-1.pt", "models/FL_global_model.pt"])
def test_a_crafted_pickle_in_a_run_folder_does_not_run(stopped_run, tmp_path, folder, name):
    run_dir = _copy(stopped_run if folder == "new" else PRE_LAYOUT_RUN, tmp_path / "run")
    marker = tmp_path / "pwned"
    payload = _Payload(marker)
    _plant(run_dir / name, {"round": 1, "state": payload} if "state" in name else {"model": payload, "round": 1})
    with pytest.raises(ResumeError) as refused:
        checkpoint.load(run_dir)
    assert not marker.exists(), "the payload ran"
    message = str(refused.value)
    assert message.startswith(f"resume={run_dir}: {run_dir / name} holds more than data (") and "\n" not in message
    assert "posix.system" in message and "runs no code from them" in message


@pytest.mark.parametrize("case", ["hostile", "damaged"])
def test_resume_of_a_bad_folder_is_refused_in_one_line_before_ray(stopped_run, tmp_path, case):
    run_dir = _copy(stopped_run, tmp_path / "run")
    bad = run_dir / "checkpoint" / "site_states" / "site-2.pt"
    if case == "hostile":
        _plant(bad, {"round": 1, "state": _Payload(tmp_path / "pwned")})
    else:
        for path in (bad, bad.with_name("site-2.prev.pt")):
            path.write_bytes(b"")
    ray_tmp = tmp_path / "ray"  # where a Ray started by this command would put its session
    done = subprocess.run([sys.executable, "-m", "fedray.run", f"resume={run_dir}", f"hydra.run.dir={tmp_path}/log"],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env={**ENV, "RAY_TMPDIR": str(ray_tmp)})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1:] == [line for line in done.stderr.splitlines() if line.startswith("fedray:")]
    assert str(bad) in done.stderr and "Traceback" not in done.stderr
    assert not ray_tmp.exists(), "Ray was started"
    assert not (tmp_path / "pwned").exists()


# -- states as data --------------------------------------------------------------------------------------

def test_algorithm_states_round_trip_through_weights_only_loading_bit_for_bit(tmp_path):
    from fedray.algorithms.fedopt import FedOpt

    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32),
              "n": np.array(7, dtype=np.int64)}
    fedopt = FedOpt({"_target_": "fedray.algorithms.server_optimizers.FedAdam", "lr": 0.01},
                    {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": 5})
    state = fedopt.init(params, 3)
    for current_round in range(2):
        averaged = {k: v + 0.1 * rng.standard_normal(v.shape).astype(v.dtype) for k, v in params.items()}
        params, state = fedopt.apply(params, averaged, {}, state, current_round)
    scaffold_like = {"c": {k: v * np.float32(0.5) for k, v in params.items()}, "num_sites": 3, "lr": np.float64(0.1),
                     "names": ("w", "b"), "big_endian": np.arange(3, dtype=">f8"), "labels": np.array(["a", "bc"])}
    for value in (state, scaffold_like):
        (tmp_path / "s.pt").write_bytes(dumps({"round": 1, "state": to_saved(value)}))
        back = from_saved(load(tmp_path / "s.pt")["state"])
        _assert_same(back, value)


def _assert_same(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(b, dict):
        assert list(a) == list(b)
        for key in b:
            _assert_same(a[key], b[key])
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(b, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    elif isinstance(b, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(b, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    else:
        assert a == b


def test_a_state_that_is_not_plain_data_is_refused_when_saved_naming_the_key():
    with pytest.raises(NotPlainData, match=r"the state\['opt'\]\['fn'\] is a function; a saved state holds"):
        to_saved({"opt": {"fn": lambda: 0, "x": 1}}, "the state")
    with pytest.raises(NotPlainData, match="numpy array of Python objects"):
        to_saved({"a": np.array([object()])})


def test_kept_models_are_written_once_and_leave_the_disk_once_no_manifest_lists_them(tmp_path):
    from fedray.fl_model import KEPT_MODELS
    from fedray.records.manifest import Manifest

    files = Manifest(tmp_path)
    model = {"w": np.arange(4, dtype=np.float32)}
    versions = {0: model, 1: {"w": model["w"] + 1}, 2: {"w": model["w"] + 2}}
    kept_by_round = [[0], [0, 1], [1, 2], [2]]  # FedBuff's start versions in flight after each aggregation
    written = []
    for current_round, kept in enumerate(kept_by_round):
        state = {"server_lr": 0.5, KEPT_MODELS: {f"version-{v}": versions[v] for v in kept}}
        checkpoint.save_algorithm_states(files, current_round, state, {})
        files.commit(current_round)
        written.append({name: entry["round"] for name, entry in files.files.items() if "kept_models" in name})
        saved = read_state_file(tmp_path / checkpoint.ALGORITHM_STATE)["state"]
        assert saved == {"server_lr": 0.5, KEPT_MODELS: [f"version-{v}" for v in kept]}  # names, not models
    folder = "checkpoint/kept_models"
    # Each written in the round it was first kept, never again.
    assert written[-1] == {f"{folder}/version-2.pt": 2} and written[2] == {f"{folder}/version-1.pt": 1,
                                                                           f"{folder}/version-2.pt": 2}
    # version-0 left the manifest in round 2 and the disk in round 3 (the previous manifest, round 2's, lists it no
    # more); version-1 left it in round 3 and stays while round 2's manifest (now the previous one) lists it.
    assert sorted(p.name for p in (tmp_path / folder).iterdir()) == ["version-1.pt", "version-2.pt"]
    assert torch.equal(load(tmp_path / folder / "version-2.pt")["model"]["w"], torch.arange(4.0) + 2)
