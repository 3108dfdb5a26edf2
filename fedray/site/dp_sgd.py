"""Record-level DP-SGD inside a site (`privacy=dp_sgd`, the cross-silo case of FLARE's hello-dp), with Opacus.

Each round a built-in site trains through Opacus's `GradSampleModule` (per-sample gradients) and
`DPOptimizer` (each sample's gradient clipped to L2 norm `privacy.clip`, Gaussian noise of std
noise_multiplier x clip added to their sum, divided by the expected batch size), on batches drawn by
Poisson sampling (each of the site's records with probability q = 1/ceil(records / batch_size) per step,
Opacus's DPDataLoader), which is what Opacus's accountant assumes. The site's epsilon at `privacy.delta` is
Opacus's RDP accountant's over every DP step the site took in the run.

What makes it fedray's:
- the noise multiplier is `privacy.noise_multiplier`, or calibrated per site from `privacy.target_epsilon`
  with Opacus's `get_noise_multiplier` for the steps the site takes if it trains every round (FLARE's
  hello-dp calibrates for epochs x total rounds the same way);
- the accountant's history is the site's own state (fedray keeps it outside every actor, checkpoints it,
  gives it back on resume), so an actor restart or a resume continues the site's ledger;
- the batches and the noise come from generators seeded by (seed, round, site): the same seed gives the
  same bits whatever worker or retry trains the site (Opacus's `secure_mode`, whose noise cannot be seeded,
  is off: as Opacus says, for experiments, not for a deployment that must resist floating-point attacks).

Imported by the site worker only when a job asks for dp_sgd (Opacus's import costs seconds).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterator, Mapping, Optional

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

# Opacus's hooks on a model's first layer fire with no input that needs a gradient (the images): torch warns
# each time, and the per-sample gradients are right (Opacus's own tests run so).
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect to "
                        "module outputs", category=UserWarning)

DP_SGD = "dp_sgd"
# A site's state under dp_sgd: {HISTORY: Opacus's accountant history, ALGORITHM: the algorithm's own site state}.
HISTORY = "dp_sgd_history"
ALGORITHM = "algorithm"


def steps_per_epoch(records: int, batch_size: int) -> int:
    """Opacus's len(DPDataLoader): the batches of an epoch."""
    return max(1, math.ceil(records / batch_size))


def sample_rate(records: int, batch_size: int) -> float:
    """Poisson sampling's q: each record's chance to be in a step's batch (Opacus: 1 / len(data_loader))."""
    return 1.0 / steps_per_epoch(records, batch_size)


def noise_multiplier(privacy: Mapping[str, Any], records: int, batch_size: int, local_epochs: int, rounds: int) -> float:
    """`privacy.noise_multiplier`, or the one that spends `privacy.target_epsilon` at `privacy.delta` over
    the steps of `rounds` rounds of `local_epochs` epochs (Opacus's get_noise_multiplier, RDP). Raises
    ValueError (Opacus's "The privacy budget is too low.") when no noise reaches the target."""
    if privacy["target_epsilon"] is None:
        return float(privacy["noise_multiplier"])
    per_epoch = steps_per_epoch(records, batch_size)
    return float(get_noise_multiplier(target_epsilon=privacy["target_epsilon"], target_delta=privacy["delta"],
                                      sample_rate=1.0 / per_epoch, steps=rounds * local_epochs * per_epoch,
                                      accountant="rdp"))


def epsilon(history: list, delta: float) -> float:
    """Opacus's RDP accountant's epsilon at `delta` over `history` [(noise multiplier, q, steps), ...]."""
    accountant = RDPAccountant()
    accountant.history = [tuple(entry) for entry in history]
    return float(accountant.get_epsilon(delta)) if history else 0.0


def model_problem(model: nn.Module) -> Optional[str]:
    """Why Opacus cannot compute this model's per-sample gradients (BatchNorm mixes a batch's samples), in
    one line naming the fix; None when it can. Leaves `model` in training mode."""
    batch_norms = [name for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if batch_norms:
        shown = ", ".join(batch_norms[:3]) + (f" and {len(batch_norms) - 3} more" if len(batch_norms) > 3 else "")
        return (f"has BatchNorm layers ({shown}), which mix a batch's samples: per-sample gradients (privacy=dp_sgd) "
                "cannot be computed; replace them by GroupNorm (Opacus's ModuleValidator.fix(model) does) "
                "or use privacy=none")
    model.train()  # Opacus validates a model in training mode, as DP-SGD runs it
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        return (f"Opacus cannot train it with per-sample gradients ({str(errors[0]).splitlines()[0][:160]}); "
                "Opacus's ModuleValidator.fix(model) replaces what it can")
    return None


def split_state(site_state: Any) -> tuple[list, Any]:
    """(the accountant's history, the algorithm's own site state) from a dp_sgd site's state (None at first)."""
    if not site_state:
        return [], None
    return [tuple(entry) for entry in site_state[HISTORY]], site_state.get(ALGORITHM)


def joined_state(history: list, algorithm_state: Any) -> dict[str, Any]:
    return {HISTORY: [list(entry) for entry in history], ALGORITHM: algorithm_state}


class SiteDPSGD:
    """One site's DP-SGD for one round: the module to run the batches through, the DP optimizer wrapping
    the round's optimizer, the Poisson batches, and the accountant continuing the site's history.
    `close()` takes Opacus's hooks off the model, which the worker's other sites share."""

    def __init__(self, model: nn.Module, optimizer: Any, *, sigma: float, clip: float, records: int, batch_size: int,
                 batch_generator: torch.Generator, noise_generator: torch.Generator, history: list) -> None:
        self.steps, self.rate = steps_per_epoch(records, batch_size), sample_rate(records, batch_size)
        self.batch_generator = batch_generator
        self.module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        self.optimizer = DPOptimizer(optimizer, noise_multiplier=sigma, max_grad_norm=clip,
                                     expected_batch_size=int(records * self.rate), loss_reduction="mean",
                                     generator=noise_generator, secure_mode=False)
        self.accountant = RDPAccountant()
        self.accountant.history = list(history)
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.rate))

    def batches(self, index: torch.Tensor) -> Iterator[torch.Tensor]:
        """One epoch's batches: ceil(records / batch_size) steps, each record in each with probability q
        (Opacus's UniformWithReplacementSampler draws the same way); a batch may be empty, a noise-only step."""
        for _ in range(self.steps):
            chosen = torch.rand(len(index), generator=self.batch_generator) < self.rate
            yield index[chosen.to(index.device)]

    @property
    def history(self) -> list:
        return list(self.accountant.history)

    def close(self) -> None:
        self.module._close()

