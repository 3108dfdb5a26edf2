"""Differential privacy (`privacy=central|local`, README "Privacy"): pure functions over numpy arrays.

`mechanisms.py`: clipping a site's update, the server's Gaussian noise and fixed-denominator mean,
adaptive clipping's step (Andrew et al. 2021), local DP's per-release noise. `ledger.py`: the privacy
ledger, dp-accounting's accountants over the rounds that actually ran, and `target_epsilon`'s calibration.
`flare_filters.py`: FLARE's task-result privacy filters (ExcludeVars, PercentilePrivacy, SVTPrivacy), run in
each site on what it sends.

Shared by the controller (noise, ledger) and the sites (clipping, local noise, filters): no torch, no Ray.
"""

from __future__ import annotations

CENTRAL, LOCAL, DP_SGD = "central", "local", "dp_sgd"
