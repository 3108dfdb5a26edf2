"""K sites trained at once from the same global weights: `torch.func.vmap` over the sites' weights and batches.

A small model trains one site at a time in kernels too small to fill a GPU; stacked, the K
sites' convolutions become one grouped convolution per layer. The result is the same as K
calls of `training.train_epochs` to float32 rounding: the same per-site shuffles (each
site's own generator, one `randperm` per epoch), the same batches (the last one of each
epoch short), the same SGD update as `torch.optim.SGD` (momentum buffer starting at the
first gradient, no dampening, no Nesterov, no weight decay).

The shape is FedJAX's `for_each_client` (fedjax/core/for_each_client.py): an init that makes
every site's state from the shared global weights, a step that advances every site's state by
its batch, and a final that reads each site's result out of the state. Sites with fewer steps
are padded as FedJAX pads clients: at a step where a site has no batch left, its weights and
momentum keep their values (`torch.where` on the step's `active` mask); inside a short batch,
padding items weigh 0 and real ones 1/len(batch), so the loss is the mean over the real items.

Not supported, refused with one line: models with buffers (BatchNorm: its batch statistics
would count a short batch's padding items, and its running statistics would need per-site
buffers mutated under vmap) and models whose state_dict holds tied parameters. Random layers (dropout) are refused by vmap itself (randomness="error"): they
could not match a sequential run's random stream anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedray.site.training import normalize

Stacked = dict[str, torch.Tensor]  # a parameter name -> that parameter of every site, stacked on dim 0


@dataclass
class SiteResult:
    """One site's local update, as `train_epochs` and `get_params` give it sequentially."""

    params: dict[str, np.ndarray]
    steps: int
    train_loss: float  # mean loss over the last epoch's batches, weighted by their size


class Schedule(NamedTuple):
    """Every site's batches, step by step: a site that has run out of batches is inactive."""

    index: torch.Tensor  # [steps, K, batch_size] int64 into the images; padding points at item 0
    weight: torch.Tensor  # [steps, K, batch_size]: 1/len(batch) on real items, 0 on padding
    active: torch.Tensor  # [steps, K] bool: the site has a batch at this step
    loss_count: torch.Tensor  # [steps, K]: items counted in the reported loss (the last epoch's), else 0
    all_active: list[bool]  # per step: no site masked, so the update needs no `where`
    steps: list[int]  # each site's own number of steps
    sizes: list[int]  # each site's number of training items


class SitesState(NamedTuple):
    params: Stacked
    momentum: Stacked  # empty when momentum is 0 (torch.optim.SGD keeps no buffer then)
    loss_sum: torch.Tensor  # [K]: the last epoch's summed loss, as train_epochs sums it


def check_batchable(model: nn.Module) -> None:
    """Raise ValueError (one line) for a model this module cannot train batched."""
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        raise ValueError(f"batched site training does not support models with buffers ({buffers[0]}, e.g. "
                         f"BatchNorm's running stats): train such a model one site at a time")
    if set(model.state_dict()) != {name for name, _ in model.named_parameters()}:
        raise ValueError("batched site training does not support tied parameters: train one site at a time")


def train_sites_batched(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    site_indices: Sequence[np.ndarray],
    *,
    generators: Sequence[torch.Generator],
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
) -> list[SiteResult]:
    """Train every site of `site_indices` (indices into `images`) from `model`'s current weights, at once.

    `generators[k]` shuffles site k exactly as `train_epochs(..., generator=generators[k])` would.
    `model` is left as it was (it only lends its structure); each site's result comes back in input order.
    """
    check_batchable(model)
    if len(generators) != len(site_indices):
        raise ValueError(f"{len(site_indices)} sites but {len(generators)} generators")
    if not site_indices:
        return []
    model.train()
    schedule = build_schedule(site_indices, generators, epochs, batch_size, images.device)
    step = _make_step(model, lr, momentum)
    state = init_sites(model, len(site_indices), momentum)
    for t, all_active in enumerate(schedule.all_active):
        batch = schedule.index[t]
        x = normalize(images[batch.reshape(-1)]).reshape(*batch.shape, *images.shape[1:])
        state = step(state, x, labels[batch], schedule.weight[t], schedule.active[t], schedule.loss_count[t],
                     all_active)
    return final_results(state, schedule)


def build_schedule(
    site_indices: Sequence[np.ndarray],
    generators: Sequence[torch.Generator],
    epochs: int,
    batch_size: int,
    device: torch.device,
) -> Schedule:
    """Each site's shuffled batches, drawn from its generator in train_epochs' order, padded to one grid."""
    batches: list[list[torch.Tensor]] = []
    last_epoch_from: list[int] = []  # the step at which each site's last epoch starts
    for indices, generator in zip(site_indices, generators):
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        site_batches: list[torch.Tensor] = []
        for epoch in range(epochs):
            if epoch == epochs - 1:
                last_epoch_from.append(len(site_batches))
            order = index[torch.randperm(len(index), generator=generator)]
            site_batches.extend(order[start : start + batch_size] for start in range(0, len(order), batch_size))
        batches.append(site_batches)
    if epochs < 1:
        last_epoch_from = [0] * len(site_indices)
    num_steps, num_sites = max(len(b) for b in batches), len(batches)
    index = torch.zeros((num_steps, num_sites, batch_size), dtype=torch.int64)
    weight = torch.zeros((num_steps, num_sites, batch_size), dtype=torch.float32)
    active = torch.zeros((num_steps, num_sites), dtype=torch.bool)
    loss_count = torch.zeros((num_steps, num_sites), dtype=torch.float32)
    for k, site_batches in enumerate(batches):
        for t, batch in enumerate(site_batches):
            index[t, k, : len(batch)] = batch
            # The same float32 value that cross_entropy's mean divides by.
            weight[t, k, : len(batch)] = 1.0 / len(batch)
            active[t, k] = True
            if t >= last_epoch_from[k]:
                loss_count[t, k] = len(batch)
    return Schedule(
        index=index.to(device),
        weight=weight.to(device),
        active=active.to(device),
        loss_count=loss_count.to(device),
        all_active=[bool(row.all()) for row in active],
        steps=[len(b) for b in batches],
        sizes=[len(indices) for indices in site_indices],
    )


def init_sites(model: nn.Module, num_sites: int, momentum: float) -> SitesState:
    """FedJAX's client_init: every site starts from the model's (global) weights, momentum zero."""
    params = {name: p.detach().unsqueeze(0).expand(num_sites, *p.shape).clone()
              for name, p in model.named_parameters()}
    buffers = {name: torch.zeros_like(p) for name, p in params.items()} if momentum else {}
    device = next(iter(params.values())).device
    return SitesState(params, buffers, torch.zeros(num_sites, device=device))


def _make_step(model: nn.Module, lr: float, momentum: float):
    """FedJAX's client_step for K sites: one SGD step of each active site on its own batch."""

    def site_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor):
        logits = functional_call(model, params, (x,))
        # Padding items weigh 0, real ones 1/len(batch): the mean over the real items.
        return (F.cross_entropy(logits, y, reduction="none") * weight).sum()

    grads_and_losses = vmap(grad_and_value(site_loss), randomness="error")

    @torch.no_grad()
    def step(state: SitesState, x, y, weight, active, loss_count, all_active: bool) -> SitesState:
        grads, losses = grads_and_losses(state.params, x, y, weight)
        params, buffers = {}, {}
        for name, p in state.params.items():
            direction = grads[name]
            if momentum:
                # torch.optim.SGD: buf = momentum * buf + grad (buf = grad at the first step: buf starts at 0).
                direction = buffers[name] = state.momentum[name].mul(momentum).add_(grads[name])
            params[name] = p.add(direction, alpha=-lr)
        if not all_active:
            # A site without a batch at this step keeps its weights and momentum.
            for stacked, before in ((params, state.params), (buffers, state.momentum)):
                for name in stacked:
                    mask = active.view(-1, *([1] * (stacked[name].dim() - 1)))
                    stacked[name] = torch.where(mask, stacked[name], before[name])
        return SitesState(params, buffers, state.loss_sum + losses * loss_count)

    return step


def final_results(state: SitesState, schedule: Schedule) -> list[SiteResult]:
    """FedJAX's client_final: each site's weights (numpy, as training.get_params), steps and loss."""
    params = {name: value.cpu().numpy() for name, value in state.params.items()}
    loss_sum = state.loss_sum.cpu().numpy()
    return [
        SiteResult(
            params={name: value[k].copy() for name, value in params.items()},
            steps=schedule.steps[k],
            train_loss=float(loss_sum[k]) / max(schedule.sizes[k], 1),
        )
        for k in range(len(schedule.steps))
    ]
