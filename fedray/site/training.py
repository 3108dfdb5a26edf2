"""Local training and evaluation on tensor-resident data: plain PyTorch, no Ray.

The dataset lives on the worker's device as one uint8 NCHW tensor; a site is a
set of indices into it. Batches are gathered by index and normalized on the fly
(the tutorial's Normalize(0.5, 0.5)), so an epoch does no per-sample decoding,
no host round-trips, and no per-site copy of the data.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedray.algorithms import ClientPart


class PlainSGD:
    """SGD with momentum, computed as `torch.optim.SGD` computes it (its single-tensor loop: the same
    bits), without `torch.optim`: its first use imports torch._dynamo, a second of CPU in every fresh
    site actor, which the job's default optimizer has no need of."""

    def __init__(self, params, lr: float, momentum: float = 0.0) -> None:
        self.params = [p for p in params if p.requires_grad]
        # lr, momentum: read by algorithms' client parts; params: by Opacus's DPOptimizer (privacy=dp_sgd)
        self.param_groups = [{"lr": lr, "momentum": momentum, "params": self.params}]
        self.buffers: list[Optional[torch.Tensor]] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        lr, momentum = self.param_groups[0]["lr"], self.param_groups[0]["momentum"]
        for k, param in enumerate(self.params):
            if param.grad is None:
                continue
            step = param.grad
            if momentum != 0:
                if self.buffers[k] is None:
                    self.buffers[k] = torch.clone(step).detach()
                else:
                    self.buffers[k].mul_(momentum).add_(step)
                step = self.buffers[k]
            param.add_(step, alpha=-lr)


class TrainingStopped(RuntimeError):
    """Training was asked to stop between batches (its result would be thrown away)."""


def to_device(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW images and int64 labels as tensors on `device` (zero-copy on CPU)."""
    return _from_numpy(images).to(device), _from_numpy(np.asarray(labels, dtype=np.int64)).to(device)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """A batch as the model takes it, by what the dtype says it holds: uint8 pixels to [-1, 1] (the
    tutorial's Normalize(0.5, 0.5)); integer tokens (next-token windows, int16 in memory) to the int64 an
    embedding takes; other floats as they are."""
    if images.dtype == torch.uint8:
        return images.float().div_(127.5).sub_(1.0)
    return images if images.is_floating_point() else images.long()


def load_params(model: nn.Module, params: Mapping[str, np.ndarray]) -> None:
    """Copy numpy weights (often read-only views into Ray's object store) into `model`."""
    model.load_state_dict(_tensors(params), strict=True)


def reloader(model: nn.Module, params: Mapping[str, np.ndarray]) -> Callable[[], None]:
    """`load_params(model, params)` now, and a function that does it again, as a batch's sites each start
    from the same global model: the first load checks names and shapes (load_state_dict, strict), the
    others copy the same tensors into the same storage (the model's state_dict views): 13 us against
    84 us for load_params on the tutorial CNN, timed alone. Training updates parameters in place
    (PlainSGD, torch.optim, the algorithms' corrections), so those views stay the model's own."""
    sources = _tensors(params)
    model.load_state_dict(sources, strict=True)
    # On the model's device once (a GPU's: one host-to-device copy a batch, not one a site).
    pairs = [(target, sources[name].to(target.device)) for name, target in model.state_dict().items()]

    @torch.no_grad()
    def reload() -> None:
        for target, source in pairs:
            target.copy_(source)

    return reload


def get_params(model: nn.Module, copy: bool = True) -> dict[str, np.ndarray]:
    """The model's state as numpy; `copy=False`: views of its tensors on CPU, valid until it trains again."""
    return {name: value.detach().cpu().numpy().copy() if copy else value.detach().cpu().numpy()
            for name, value in model.state_dict().items()}


def train_epochs(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    generator: torch.Generator,
    on_loss: Optional[Callable[[int, float], None]] = None,
    loss_every: int = 10,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    client: Optional[ClientPart] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    forward: Optional[nn.Module] = None,
    batches: Optional[Callable[[torch.Tensor], Iterable[torch.Tensor]]] = None,
) -> tuple[float, int]:
    """Local training over `epochs` shuffled passes of `indices`; returns (mean loss of the last epoch, steps).

    `optimizer` defaults to SGD(lr, momentum); `scheduler`, if any, steps after each epoch.
    `client` is the algorithm's part (fedray/algorithms): a term added to each batch's loss, a
    correction after each step. `on_loss(steps, loss)` hears, every `loss_every` steps, the mean
    loss of the steps since its last call.
    `should_stop()`, asked before every batch, ends training at once with `TrainingStopped`.
    `forward` computes the batches' outputs instead of `model` (Opacus's GradSampleModule around it), and
    `batches(indices)` draws an epoch's batches instead of a shuffle cut in `batch_size` (DP-SGD's Poisson
    sampling: a batch may then be empty, a step of noise only).
    """
    model.train()
    if optimizer is None:
        optimizer = PlainSGD(model.parameters(), lr=lr, momentum=momentum)
    client = client or ClientPart()
    forward = forward or model
    index = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(images.device)
    steps = 0
    epoch_loss = torch.zeros((), device=images.device)
    for _ in range(epochs):
        epoch_loss.zero_()
        seen = heard_loss = heard_seen = 0
        for batch in (batches or _shuffled(generator, batch_size))(index):
            if should_stop is not None and should_stop():
                raise TrainingStopped(f"stopped after {steps} steps: the server gave up on this task")
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(forward(normalize(images[batch])), labels[batch])
            term = client.loss_term(model)
            (loss if term is None else loss + term).backward()
            optimizer.step()
            client.after_step(model, optimizer.param_groups[0]["lr"])
            # Summed on the device: no host sync per step, only one every `loss_every` for `on_loss`.
            if len(batch):  # an empty batch's mean loss is NaN
                epoch_loss += loss.detach() * len(batch)
            seen += len(batch)
            steps += 1
            if on_loss is not None and steps % loss_every == 0 and seen > heard_seen:
                total = float(epoch_loss)
                on_loss(steps, (total - heard_loss) / (seen - heard_seen))
                heard_loss, heard_seen = total, seen
        if scheduler is not None:
            scheduler.step()
    return float(epoch_loss) / max(seen, 1), steps


def _shuffled(generator: torch.Generator, batch_size: int) -> Callable[[torch.Tensor], Iterator[torch.Tensor]]:
    """An epoch's batches: a shuffle of the indices (drawn from `generator`), cut every `batch_size`."""
    def batches(index: torch.Tensor) -> Iterator[torch.Tensor]:
        order = index[torch.randperm(len(index), generator=generator).to(index.device)]
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]
    return batches


@torch.no_grad()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, indices: np.ndarray, batch_size: int = 1000
) -> dict[str, float]:
    """Sums over `indices`: {"correct", "loss_sum", "count"}; `aggregation.pool_metrics` turns them into means."""
    model.eval()
    index = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(images.device)
    correct = torch.zeros((), device=images.device)
    loss = torch.zeros((), device=images.device, dtype=torch.float64)
    for start in range(0, len(index), batch_size):
        batch = index[start : start + batch_size]
        logits = model(normalize(images[batch]))
        loss += F.cross_entropy(logits, labels[batch], reduction="sum").double()
        correct += (logits.argmax(dim=1) == labels[batch]).sum()
    return {"correct": float(correct), "loss_sum": float(loss), "count": len(index)}


def _tensors(params: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """`_from_numpy` of every variable, under one warnings filter (one per variable cost load_params 25-30 us more)."""
    with _reading_only():
        return {name: torch.from_numpy(np.asarray(value)) for name, value in params.items()}


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing `array`'s memory, which may be a read-only view into Ray's object store."""
    with _reading_only():
        return torch.from_numpy(array)


@contextmanager
def _reading_only() -> Iterator[None]:
    """Callers only read these tensors (load_state_dict copies, batches are gathered copies), so
    torch's warning about a read-only array does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        yield


def local_optimizer(model: torch.nn.Module, job: Mapping[str, Any], current_round: int) -> tuple[torch.optim.Optimizer, Any]:
    """The job's local optimizer (`optimizer._target_`) and LR schedule (`lr_scheduler`, stepped once
    per local epoch over the whole run), built afresh each round: the schedule is brought to this
    round's first epoch by stepping it, so its LRs are those of one scheduler run across rounds."""
    plain = plain_sgd(job)
    if plain:  # the default: the same bits as torch.optim.SGD, without importing torch.optim
        return PlainSGD(model.parameters(), lr=plain[0], momentum=plain[1]), None
    # Here, not at import: this module is all that benchmarks/gpu.py needs on a machine without Hydra.
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if not job.get("optimizer"):  # a run saved before `optimizer` existed, with a schedule: its SGD
        optimizer = torch.optim.SGD(model.parameters(), lr=job["lr"], momentum=job["momentum"])
    else:
        optimizer = instantiate(OmegaConf.create(job["optimizer"]), model.parameters())
    if not job.get("lr_scheduler"):
        return optimizer, None
    scheduler = instantiate(OmegaConf.create(job["lr_scheduler"]), optimizer)
    with warnings.catch_warnings():  # stepping it before any optimizer step is the point here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(current_round * job["local_epochs"]):
            scheduler.step()
    return optimizer, scheduler


def plain_sgd(job: Mapping[str, Any]) -> Optional[tuple[float, float]]:
    """(lr, momentum) when the job trains with plain SGD (no weight decay, no schedule), which
    `PlainSGD` computes; else None."""
    optimizer = job.get("optimizer") or {"_target_": "torch.optim.SGD", "lr": job["lr"], "momentum": job["momentum"]}
    settings = {key: value for key, value in optimizer.items() if key != "_target_"}
    plain = (optimizer["_target_"] == "torch.optim.SGD" and not job.get("lr_scheduler")
             and set(settings) <= {"lr", "momentum", "weight_decay"} and not settings.get("weight_decay"))
    return (settings["lr"], settings.get("momentum", 0.0)) if plain else None
