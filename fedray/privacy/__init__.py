"""Differential privacy (`privacy=central|local`, README "Privacy"): pure functions over numpy arrays.

`mechanisms.py`: clipping a site's update, the server's Gaussian noise and fixed-denominator mean,
adaptive clipping's step (Andrew et al. 2021), local DP's per-release noise. `ledger.py`: the privacy
ledger, dp-accounting's accountants over the rounds that actually ran, and `target_epsilon`'s calibration.
`site.py`: what a site does to its result before it leaves; `server.py`: the controller's side of a round.
`flare_filters.py`: FLARE's task-result privacy filters (ExcludeVars, PercentilePrivacy, SVTPrivacy), run in
each site on what it sends.

Shared by the controller (noise, ledger) and the sites (clipping, local noise, filters): no torch, no Ray.
"""

from __future__ import annotations

from typing import Any, Mapping

NONE, CENTRAL, LOCAL, DP_SGD = "none", "central", "local", "dp_sgd"
ADAPTIVE = "adaptive"  # privacy.clip=adaptive
CLIP = "fedray_privacy_clip"  # in the round's message: the clip norm the sites clip to this round
UNCLIPPED = "fedray_privacy_unclipped"  # in a site's result meta: whether its update was within the clip norm
PRIVACY_STATE = "fedray_privacy"  # in the server state (checkpointed): the clip norm and the ledgers


def update_privacy(privacy: Mapping[str, Any]) -> bool:
    """Whether sites clip their update and the server averages them with weight 1 (central or local DP)."""
    return privacy["mode"] in (CENTRAL, LOCAL)


def delta_of(privacy: Mapping[str, Any], num_clients: int) -> float:
    """The delta epsilon is reported at: privacy.delta, by default 1/num_clients."""
    return privacy["delta"] if privacy["delta"] is not None else 1.0 / num_clients
