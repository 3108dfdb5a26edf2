"""Local training and evaluation on tensor-resident data: plain PyTorch, no Ray.

Images live on the site's device as one normalized tensor; batches are drawn by
indexing it, so an epoch does no per-sample decoding or host round-trips.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def to_tensors(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 HWC images -> float NCHW in [-1, 1] (the tutorial's Normalize(0.5, 0.5)), on `device`."""
    x = _from_numpy(np.ascontiguousarray(images)).to(device)
    x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()
    y = _from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    return x, y


def load_params(model: nn.Module, params: Mapping[str, np.ndarray]) -> None:
    """Copy numpy weights (often read-only views into Ray's object store) into `model`."""
    model.load_state_dict({name: _from_numpy(np.asarray(value)) for name, value in params.items()}, strict=True)


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing `array`'s memory, which may be a read-only view into Ray's object store.

    Callers only read it (load_state_dict copies, to_tensors converts), so the
    read-only warning does not apply.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def get_params(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: value.detach().cpu().numpy().copy() for name, value in model.state_dict().items()}


def train_epochs(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    generator: torch.Generator,
) -> tuple[float, int]:
    """SGD over `epochs` shuffled passes; returns (mean loss of the last epoch, steps taken)."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    count = len(labels)
    steps = 0
    epoch_loss = torch.zeros((), device=images.device)
    for _ in range(epochs):
        epoch_loss.zero_()
        order = torch.randperm(count, generator=generator).to(images.device)
        for start in range(0, count, batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            # Summed on the device: no host sync per step.
            epoch_loss += loss.detach() * len(batch)
            steps += 1
    return float(epoch_loss) / max(count, 1), steps


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Accuracy and mean cross-entropy of `model` on the given tensors."""
    if len(labels) == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    model.eval()
    correct = torch.zeros((), device=images.device)
    loss = torch.zeros((), device=images.device, dtype=torch.float64)
    for start in range(0, len(labels), batch_size):
        logits = model(images[start : start + batch_size])
        target = labels[start : start + batch_size]
        loss += F.cross_entropy(logits, target, reduction="sum").double()
        correct += (logits.argmax(dim=1) == target).sum()
    return {"accuracy": float(correct) / len(labels), "loss": float(loss) / len(labels)}
