"""Time and heterogeneity (`system=`, README "Time and heterogeneity"): pure functions of the seed and the
sites' profiles, so that who trains and who counts never depends on Ray's timing.

`profiles.py`: each site's speed, bandwidths, latency and dropout (uniform, seeded log-normal, or FedScale's
device_capacity trace). `clock.py`: a task's simulated seconds and its seeded dropout. `availability.py`:
FedScale's availability traces, read with an unpickler that runs no code. `schedule.py`: a synchronous
round on the clock (deadline, over-selection, availability, dropouts), decided before anything trains.
`traces.py`: writes small files in FedScale's two formats (its real traces are not downloadable here).

Shared by config (validation) and the controller (the schedule): numpy only, no torch, no Ray.
"""

from __future__ import annotations

UNIFORM, LOGNORMAL, TRACE = "uniform", "lognormal", "trace"
# A site's failure kinds for the work it was spared (it never trains): see schedule.py.
LATE, OVER_SELECTED, DROPPED = "late", "over_selected", "dropped"
