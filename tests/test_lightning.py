"""PyTorch Lightning through FLARE's Lightning Client API: examples/hello-lightning, FLARE's example
with fedray's import, on real Ray and FLARE's own FakeData (`--synthetic_data`)."""

import json
import os

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning", reason="PyTorch Lightning is an extra: pip install -e '.[lightning]'")

from fedray import run_job  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_session")

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "hello-lightning")


@pytest.mark.slow
def test_the_hello_lightning_example_trains_each_round_and_answers_cross_site_tasks(job_config, tmp_path):
    job = job_config("num_clients=2", "rounds=2", f"site.script={EXAMPLE}/client.py", "model._target_=model.LitNet",
                     "site.script_args='--synthetic_data --batch_size 8'")
    summary = run_job(job, tmp_path)
    assert [sorted(r["sites"]) for r in summary["rounds"]] == [["site-1", "site-2"]] * 2
    # FakeData's 32 training images at batch 8, max_epochs=1: 4 steps, in the second round's fit as in the
    # first (a plain Trainer would stop at once: max_epochs reached).
    assert [r["sites"]["site-1"]["num_steps"] for r in summary["rounds"]] == [4, 4]
    # The metrics of trainer.validate() on the received global model come with the fitted weights.
    assert all(0 <= r["sites"]["site-2"]["accuracy"] <= 1 for r in summary["rounds"])
    state = torch.load(tmp_path / "models" / "FL_global_model.pt")["model"]
    assert sorted(state) == sorted(f"model.{name}" for name in ("conv1.weight", "conv1.bias", "conv2.weight",
                                                                "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight",
                                                                "fc2.bias", "fc3.weight", "fc3.bias"))
    results = json.loads((tmp_path / "cross_site_val" / "cross_val_results.json").read_text())
    assert list(results["site-1"]) == ["site-1", "site-2", "SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt"]
    # Each cell is what trainer.validate() logged, under the model's own names (FLARE's file keeps them).
    assert all(0 <= cell["accuracy"] <= 1 and "val_loss" in cell for row in results.values() for cell in row.values())


def test_patch_adds_fedrays_callbacks_once_for_either_lightning_package(tmp_path):
    from fedray import client
    from fedray.client import lightning as flare
    from fedray.site.script_runner import ScriptSite

    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(RuntimeError, match="only usable in a script that fedray runs"):
        flare.patch(trainer)  # FLARE's FLCallback calls init(): outside a site there is no job
    client._bind(ScriptSite("site-1", str(tmp_path / "client.py"), "", {"job_id": "fedray-test"}))
    try:
        for package in ("pytorch_lightning", "lightning.pytorch"):
            lightning = pytest.importorskip(package, reason=f"{package} is not installed")
            trainer = lightning.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                                        enable_progress_bar=False)
            flare.patch(trainer)
            flare.patch(trainer)
            ours = [cb for cb in trainer.callbacks if type(cb).__module__ == "fedray.client.lightning"]
            assert sorted(type(cb).__name__ for cb in ours) == ["FLCallback", "RestoreState"]
            assert all(isinstance(cb, lightning.Callback) for cb in ours)
    finally:
        client._bind(None)
