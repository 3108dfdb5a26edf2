"""FedScale's availability traces: when each client is online.

The format (FedScale's client_behave_trace, read by fedscale/cloud/internal/client_metadata.py): a pickle of
{client_id: {"active": [t0, ...], "inactive": [t1, ...], "finish_time": T, "duration": ..., ...}}: the client is
online in each [active[i], inactive[i]] (seconds), and the trace repeats every `finish_time` seconds. site-k
follows the file's k-th client. FedScale's `is_active` walks a cursor that only moves forward; here the time
is looked up afresh, so a question's answer depends only on the trace and the time.

A pickle can name any callable to run as it loads, so traces are read by an unpickler that admits built-in
containers and numbers only: a file that names anything else is refused in one line, before it runs.
"""

from __future__ import annotations

import bisect
import io
import math
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

# The only globals a trace may name: the containers pickle's own opcodes do not build (protocols < 4).
_ALLOWED = {("builtins", "set"), ("builtins", "frozenset")}


class UnsafePickle(ValueError):
    """A pickle that names code to run; the message is one line."""


class _ContainersOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickle(f"names {module}.{name}: only built-in containers and numbers are read (a pickle can "
                           "carry code); write the trace with plain dicts, lists and floats")


def safe_load(path: str | Path, key: str = "system.availability") -> Any:
    """The pickle at `path` (the config's `key`), made of dicts, lists, tuples, sets, str and numbers only;
    UnsafePickle otherwise, one line naming the key."""
    data = Path(path).read_bytes()
    try:
        return _ContainersOnly(io.BytesIO(data)).load()
    except UnsafePickle as err:
        raise UnsafePickle(f"{key}={path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise ValueError(f"{key}={path}: not a readable pickle ({err})") from None


def site_traces(raw: Mapping[Any, Any], sites: Sequence[str]) -> dict[str, dict]:
    """Each site's trace (site-k: the file's k-th client), checked: ValueError names what is wrong."""
    from fedray.system.profiles import ordered_entries

    traces = {}
    for site, entry in zip(sites, ordered_entries(raw, len(sites), "system.availability")):
        if not isinstance(entry, Mapping) or not {"active", "inactive", "finish_time"} <= set(entry):
            raise ValueError(f"system.availability: {site}'s entry needs active, inactive and finish_time (FedScale's "
                             "client_behave_trace format)")
        active, inactive = [float(t) for t in entry["active"]], [float(t) for t in entry["inactive"]]
        if len(active) != len(inactive) or any(a > b for a, b in zip(active, inactive)) or active != sorted(active):
            raise ValueError(f"system.availability: {site}'s active and inactive times must pair up in order "
                             "(active[i] <= inactive[i], ascending)")
        traces[site] = {"active": active, "inactive": inactive, "finish_time": float(entry["finish_time"])}
    return traces


def _interval(trace: Mapping[str, Any], t: float) -> tuple[int, float] | None:
    """(the online interval holding time `t`, t's offset into the trace's period), or None when offline."""
    period = trace["finish_time"]
    norm = t % period if period > 0 else t
    index = bisect.bisect_right(trace["active"], norm) - 1
    if index >= 0 and norm <= trace["inactive"][index]:
        return index, norm
    return None


def available(traces: Mapping[str, Mapping], site: str, t: float) -> bool:
    """Whether `site` is online at simulated time `t` (a site without a trace always is)."""
    trace = traces.get(site)
    return trace is None or _interval(trace, t) is not None


def active_until(traces: Mapping[str, Mapping], site: str, t: float) -> float:
    """When `site`, online at `t`, goes offline (inf without a trace); `t` itself when it is offline."""
    trace = traces.get(site)
    if trace is None:
        return math.inf
    found = _interval(trace, t)
    if found is None:
        return t
    index, norm = found
    return t + (trace["inactive"][index] - norm)


def next_online(traces: Mapping[str, Mapping], site: str, t: float) -> float:
    """The first time from `t` on when `site` is online (`t` if it is; inf if it never is)."""
    trace = traces.get(site)
    if trace is None or _interval(trace, t) is not None:
        return t
    if not trace["active"]:
        return math.inf
    period = trace["finish_time"]
    norm = t % period if period > 0 else t
    later = [start for start in trace["active"] if start > norm]
    if later:
        return t + later[0] - norm
    return t + period - norm + trace["active"][0] if period > 0 else math.inf


def ever_available(traces: Mapping[str, Mapping]) -> bool:
    """Whether any site is online at some time (a trace of empty intervals lists leaves none)."""
    return any(trace["active"] for trace in traces.values())
