"""What a site does to its trained model before it leaves the site, under central or local DP."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from fedray.aggregation import Params
from fedray.privacy import CENTRAL, CLIP, LOCAL, UNCLIPPED
from fedray.privacy.mechanisms import LOCAL_NOISE, clip_update, local_release, noise_generator, private_names


def release(params: Mapping[str, np.ndarray], global_params: Mapping[str, np.ndarray], job: Mapping[str, Any],
            message: Mapping[str, Any], current_round: int, site_number: int) -> tuple[Params, dict[str, Any]]:
    """The model the site sends, and what its result's meta gains.

    central: the update clipped to this round's clip norm (the message's: fixed, or adaptive's current one),
    and whether it fitted unclipped (adaptive clipping counts those). local: clipped to privacy.clip, then
    Gaussian noise of std 2 clip noise_multiplier per coordinate (any two of the site's updates differ by at
    most 2 clip), drawn from the generator of (seed, round, site): the same bits on any worker, in any batch.
    """
    privacy = job["privacy"]
    names = private_names(global_params, job["workflows"]["scatter_and_gather"]["exclude_vars"])
    if privacy["mode"] == CENTRAL:
        clipped, norm = clip_update(params, global_params, message[CLIP], names)
        return clipped, {UNCLIPPED: bool(norm <= message[CLIP])}
    if privacy["mode"] == LOCAL:
        rng = noise_generator(job["seed"], current_round, LOCAL_NOISE, site_number)
        released, norm = local_release(params, global_params, privacy["clip"], 2 * privacy["clip"] * privacy["noise_multiplier"],
                                       names, rng)
        return released, {UNCLIPPED: bool(norm <= privacy["clip"])}
    return dict(params), {}
