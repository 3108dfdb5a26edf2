# A minimal FLARE-style Client API script for tests; `--misbehave` makes one site fail in a chosen way.
import argparse
import sys
import time

import torch

import fedray.client as flare

parser = argparse.ArgumentParser()
parser.add_argument("--misbehave", choices=["import_error", "task_error", "no_send", "wrong_keys", "hang"])
parser.add_argument("--site", default="site-2")
parser.add_argument("--diff", type=float, default=None, help="send params_type DIFF: this constant added to every variable")
parser.add_argument("--done_file", default=None, help="written after the loop, to show the epilogue ran")
args = parser.parse_args()

flare.init()
me = flare.get_site_name()
bad = args.misbehave if me == args.site else None
if bad == "import_error":
    raise ImportError("this script cannot start in " + me)

while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    if flare.is_evaluate():
        flare.send(flare.FLModel(metrics={"accuracy": 0.5}))
        continue
    if flare.is_submit_model():
        flare.send(flare.FLModel(params=model.params))
        continue
    if bad == "task_error":
        raise ValueError("the training step blew up in " + me)
    if bad == "no_send":
        break
    if bad == "hang":  # never answers train, and never returns to receive()
        time.sleep(10**6)
    if bad == "wrong_keys":
        flare.send(flare.FLModel(params={"bogus": torch.zeros(3)}, meta={"NUM_STEPS_CURRENT_ROUND": 1}))
        continue
    if args.diff is not None:
        diff = {k: torch.full_like(v, args.diff) for k, v in model.params.items()}
        flare.send(flare.FLModel(params=diff, params_type=flare.ParamsType.DIFF, meta={"NUM_STEPS_CURRENT_ROUND": 3}))
    else:
        flare.send(flare.FLModel(params=model.params, metrics={"loss": 1.0}, meta={"NUM_STEPS_CURRENT_ROUND": 2}))

if args.done_file:
    with open(f"{args.done_file}.{me}", "w") as f:
        f.write(f"{me} left its loop; is_running={flare.is_running()}\n")
