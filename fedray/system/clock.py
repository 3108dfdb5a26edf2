"""The simulated clock's one formula, and a task's seeded dropout.

A task's seconds = model_bytes / download_bytes_per_s + num_samples x seconds_per_sample
                   + model_bytes / upload_bytes_per_s + latency_s
(the site downloads the global model, trains on its samples, uploads a model of the same size; FedScale's
get_completion_time, plus a latency).
"""

from __future__ import annotations

import zlib

import numpy as np

from fedray.system.profiles import SiteProfile

_DROPOUT_STREAM = 0xD50


def task_seconds(profile: SiteProfile, model_bytes: int, num_samples: int) -> float:
    """Simulated seconds from the task's send to its answer's arrival (the formula above)."""
    return (model_bytes / profile.download_bytes_per_s + num_samples * profile.seconds_per_sample
            + model_bytes / profile.upload_bytes_per_s + profile.latency_s)


def dropped(profile: SiteProfile, seed: int, current_round: int, site: str) -> bool:
    """Whether `site`'s task in `current_round` is lost: a draw fixed by (seed, round, site's name), so it is
    the same whichever process asks, in whichever order (the name's CRC32, not Python's salted hash)."""
    if profile.dropout <= 0:
        return False
    draw = np.random.default_rng([seed, current_round, zlib.crc32(site.encode()), _DROPOUT_STREAM]).random()
    return bool(draw < profile.dropout)
