# A FLARE cifar10-sim style SCAFFOLD + FedProx Client API script; only the imports differ from FLARE's
# (nvflare.client, nvflare.app_common.app_constant, nvflare.app_opt.pt.{fedproxloss,scaffold}).
import argparse
import copy
import os

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim

import fedray.client as flare
from fedray.client import AlgorithmConstants, ParamsType, PTFedProxLoss, PTScaffoldHelper
from fedray.models import Net

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.05)
parser.add_argument("--fedproxloss_mu", type=float, default=0.0)
parser.add_argument("--dump", default=None, help="folder: each round's control variate diff, as site-k.round-r.npz")
args = parser.parse_args()

model = Net()
criterion = nn.CrossEntropyLoss()
optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
criterion_prox = PTFedProxLoss(mu=args.fedproxloss_mu) if args.fedproxloss_mu > 0 else None
scaffold_helper = None

flare.init()
site = flare.get_site_name()
generator = torch.Generator().manual_seed(int(site.rsplit("-", 1)[1]))
images, labels = torch.randn(64, 3, 32, 32, generator=generator), torch.randint(0, 10, (64,), generator=generator)

while flare.is_running():
    input_model = flare.receive()
    if input_model is None:
        break
    if flare.is_evaluate():
        flare.send(flare.FLModel(metrics={"accuracy": 0.5}))
        continue
    if flare.is_submit_model():
        flare.send(flare.FLModel(params=model.state_dict()))
        continue
    model.load_state_dict(input_model.params, strict=True)
    global_model = copy.deepcopy(model)
    for param in global_model.parameters():
        param.requires_grad = False
    if scaffold_helper is None:
        scaffold_helper = PTScaffoldHelper()
        scaffold_helper.init(model=model)
    global_ctrl_weights = input_model.meta.get(AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL)
    if not global_ctrl_weights:
        raise ValueError("global_ctrl_weights were empty!")
    for k in global_ctrl_weights.keys():
        global_ctrl_weights[k] = torch.as_tensor(global_ctrl_weights[k])
    scaffold_helper.load_global_controls(weights=global_ctrl_weights)
    c_global_para, c_local_para = scaffold_helper.get_params()

    steps = 0
    curr_lr = optimizer.param_groups[0]["lr"]
    for start in range(0, len(images), 16):
        optimizer.zero_grad()
        loss = criterion(model(images[start:start + 16]), labels[start:start + 16])
        if criterion_prox is not None:
            loss += criterion_prox(model, global_model)
        loss.backward()
        optimizer.step()
        scaffold_helper.model_update(model=model, curr_lr=curr_lr, c_global_para=c_global_para, c_local_para=c_local_para)
        steps += 1
    scaffold_helper.terms_update(model=model, curr_lr=curr_lr, c_global_para=c_global_para,
                                 c_local_para=c_local_para, model_global=global_model)
    if args.dump:
        np.savez(os.path.join(args.dump, f"{site}.round-{input_model.current_round}.npz"),
                 **scaffold_helper.get_delta_controls())
    model_diff = {k: model.state_dict()[k] - global_model.state_dict()[k] for k in model.state_dict()}
    flare.send(flare.FLModel(params=model_diff, params_type=ParamsType.DIFF, metrics={"loss": float(loss)},
                             meta={"NUM_STEPS_CURRENT_ROUND": steps,
                                   AlgorithmConstants.SCAFFOLD_CTRL_DIFF: scaffold_helper.get_delta_controls()}))
