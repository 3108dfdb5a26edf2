"""A site's side of secure_aggregation=he (fedray/secure/he.py): FLARE's HEModelDecryptor on the global model a task
brings, HEModelEncryptor on the update it sends, with the site context (the secret key) the driver handed the actor."""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from fedray.aggregation import NON_FINITE, finite
from fedray.fl_model import FLModel
from fedray.secure import he


class SiteEncryption:
    """One per site worker: decrypts each global model once (a task's sites and evaluation parts share it)."""

    def __init__(self, job: dict[str, Any], context: bytes) -> None:
        """`context`: the sites' serialized context, with the secret key (the driver's he.KEY_HOLDER actor's)."""
        secure = job["secure_aggregation"]
        self.context = context
        self.fraction_bits: int = secure["fraction_bits"]
        sag = job["workflows"]["scatter_and_gather"]
        self.cohort: int = sag["clients_per_round"] or job["num_clients"]
        self.factors: Mapping[str, float] = sag["aggregation_weights"] or {}
        self.last: tuple[str, dict[str, np.ndarray], float] | None = None  # (digest, params, seconds decrypting)
        self.received = {"he_decrypt_seconds": 0.0, "he_bytes_received": 0}

    def plain(self, params: Any) -> Any:
        """The global model as arrays: the encrypted aggregate decrypted, or the plain first one (FLARE's first
        round too: the initial model is not encrypted). Notes the seconds and bytes for this task's sites."""
        if not isinstance(params, he.Encrypted):
            self.received = {"he_decrypt_seconds": 0.0, "he_bytes_received": 0}
            return params
        digest = params.digest()
        if self.last is None or self.last[0] != digest:
            started = time.perf_counter()
            decrypted = he.decrypt(params, self.context)
            self.last = (digest, decrypted, time.perf_counter() - started)
        # What each site spends: one decryption of the model (this worker's sites and evaluations share it).
        self.received = {"he_decrypt_seconds": round(self.last[2], 6), "he_bytes_received": params.nbytes}
        return self.last[1]

    def encrypted(self, site: str, params: Mapping[str, np.ndarray], steps: float) -> tuple[he.Encrypted, dict]:
        """The update weighed by its aggregation weight x steps (FLARE's weigh_by_local_iter), encrypted; and the
        site's costs for its round record."""
        if not finite(params):
            raise FloatingPointError(NON_FINITE)  # never encrypted: the server could not tell
        started = time.perf_counter()
        update = he.encrypt(params, self.factors.get(site, 1.0) * steps, self.context, self.fraction_bits, self.cohort)
        costs = {"he_encrypt_seconds": round(time.perf_counter() - started, 6), "he_bytes_sent": update.nbytes,
                 **self.received}
        return update, costs

    def seal(self, site: str, result: FLModel, steps: float) -> FLModel:
        """A train result as it leaves the site under HE: no params, its encrypted update in its meta."""
        if result.params is None:
            return result
        update, costs = self.encrypted(site, result.params, steps)
        result.meta[he.UPDATE] = update
        result.metrics.update(costs)
        result.params = None
        return result
