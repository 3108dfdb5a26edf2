"""FLARE's privacy filters on a site's task result: ExcludeVars, PercentilePrivacy, SVTPrivacy.

A FLARE client's `task_result_filters` (config_fed_client: `[{tasks: [train], filters: [{path, args}]}]`,
in fedray `flare.task_result_filters`, which `flare_job=` sets) rewrite what a site sends before it leaves
the site. These are FLARE 2.4-2.5's `nvflare/app_common/filters/{exclude_vars,percentile_privacy,
svt_privacy}.py` as pure functions over the result's variables (a DXO's data: name -> numpy array), with
FLARE's arguments, defaults and arithmetic line for line, and FLARE's DXOFilter rules around them: a filter
runs on the data kinds it is given (`data_kinds`, by default WEIGHTS and WEIGHT_DIFF; a WEIGHTS result is
filtered as it is, as FLARE does, not turned into a difference), not on empty data, and the chain runs in
its order (ExcludeVars before PercentilePrivacy: the percentile of the variables left).

One difference: SVT's Laplace noise comes from a generator the caller seeds (fedray: the job's seed, the
round, the site), never from numpy's global state, so the same seed gives the same bits whatever worker,
batch or retry trains the site. FLARE draws from `np.random` unseeded.

Which tasks: fedray filters `train` results (what every FLARE example filters). A chain for `validate`
changes nothing (its result is metrics, which these filters pass, in FLARE too); other tasks are refused.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np

WEIGHTS = "WEIGHTS"
WEIGHT_DIFF = "WEIGHT_DIFF"
KINDS = (WEIGHT_DIFF, WEIGHTS)  # what the three filters support, and filter by default (FLARE's order)

# Each filter's arguments and FLARE's defaults (the constructors' signatures).
ARGS: dict[str, dict[str, Any]] = {
    "ExcludeVars": {"exclude_vars": None, "data_kinds": None},
    "PercentilePrivacy": {"percentile": 10, "gamma": 0.01, "data_kinds": None},
    "SVTPrivacy": {"fraction": 0.1, "epsilon": 0.1, "noise_var": 0.1, "gamma": 1e-5, "tau": 1e-6, "data_kinds": None,
                   "replace": True},
}
FILTERED_TASKS = ("train",)
PASSED_TASKS = ("validate",)  # a metrics result: the filters pass it unchanged (DXOFilter's data kinds)
DIRECTIONS = ("out", "inout", "in")  # a client's result chains run "out" (FLARE's default there); "in" never


def class_name(entry: Mapping[str, Any]) -> str:
    """A FLARE config entry's class (`path` or `name`), without its module."""
    return str(entry.get("path") or entry.get("name") or "").rsplit(".", 1)[-1]


def problems(chains: Any) -> list[str]:
    """Why `chains` (a client's task_result_filters) cannot run, one line each: what FLARE's config reader
    refuses (no tasks, a task in two chains), what it would build and then skip silently (a percentile
    outside 0..100: fedray says so instead), and filters or tasks fedray does not run."""
    if not isinstance(chains, (list, tuple)):
        return [f"must be a list of {{tasks: [...], filters: [...]}} (FLARE's task_result_filters), not {chains!r}"]
    found: list[str] = []
    seen: set[tuple[str, str]] = set()
    for k, chain in enumerate(chains):
        where = f"[{k}]"
        if not isinstance(chain, Mapping):
            found.append(f"{where}: must be {{tasks: [...], filters: [...]}}")
            continue
        unknown = sorted(set(chain) - {"tasks", "filters", "direction"})
        if unknown:
            found.append(f"{where}: unknown key(s) {', '.join(unknown)}; a chain has tasks, filters and direction")
        tasks, filters = chain.get("tasks"), chain.get("filters")
        direction = str(chain.get("direction", "out")).lower()
        if direction not in DIRECTIONS:
            found.append(f"{where} direction={chain.get('direction')}: must be out, in or inout")
        if not isinstance(tasks, (list, tuple)) or not tasks or not all(isinstance(t, str) for t in tasks):
            found.append(f"{where} tasks: must be a non-empty list of task names, e.g. [train]")
            tasks = []
        for task in tasks:
            if task not in FILTERED_TASKS + PASSED_TASKS:
                found.append(f"{where} tasks: '{task}': fedray filters train results only (validate's are metrics, "
                             "which these filters pass)")
            for way in (("in", "out") if direction == "inout" else (direction,)):
                if (task, way) in seen:  # FLARE's reader refuses it too
                    found.append(f"{where}: a second chain for task '{task}' ({way}); FLARE allows one per task")
                seen.add((task, way))
        if not isinstance(filters, (list, tuple)) or not filters:
            found.append(f"{where} filters: must be a non-empty list of {{path, args}}")
            continue
        for j, entry in enumerate(filters):
            found += [f"{where}.filters[{j}] {line}" for line in _filter_problems(entry)]
    return found


def _filter_problems(entry: Any) -> list[str]:
    if not isinstance(entry, Mapping):
        return [f"{entry!r}: must be {{path: ..., args: {{...}}}}"]
    name = class_name(entry)
    if name not in ARGS:
        return [f"{name or entry}: fedray runs FLARE's ExcludeVars, PercentilePrivacy and SVTPrivacy as result filters"]
    args = entry.get("args") or {}
    if not isinstance(args, Mapping):
        return [f"{name} args={args!r}: must be a mapping of its arguments"]
    found = [f"{name}: no argument '{arg}' (FLARE's are {', '.join(ARGS[name])})" for arg in args if arg not in ARGS[name]]
    given = {**ARGS[name], **args}
    kinds = given["data_kinds"]
    if kinds is not None and (not isinstance(kinds, (list, tuple)) or not set(kinds) <= set(KINDS)):
        found.append(f"{name} data_kinds={kinds}: must list WEIGHTS and/or WEIGHT_DIFF")

    def need(ok: bool, arg: str, rule: str) -> None:
        if not ok:
            found.append(f"{name} {arg}={given[arg]}: {rule}")

    def number(arg: str) -> bool:
        ok = isinstance(given[arg], (int, float)) and not isinstance(given[arg], bool) and math.isfinite(given[arg])
        need(ok, arg, "must be a number")
        return ok

    if name == "ExcludeVars":
        names = given["exclude_vars"]
        # FLARE logs and skips the filter for anything else: a filter that does nothing is a mistake.
        need(isinstance(names, str) and names != "" or isinstance(names, (list, tuple)) and names != []
             and all(isinstance(n, str) for n in names), "exclude_vars",
             "must be a regex or a list of variable names (FLARE skips the filter otherwise)")
        if isinstance(names, str) and names:
            try:
                re.compile(names)
            except re.error as err:
                found.append(f"{name} exclude_vars={names!r}: not a regular expression ({err})")
    elif name == "PercentilePrivacy":
        if number("percentile"):
            need(0 <= given["percentile"] <= 100, "percentile", "must be in [0, 100] (FLARE skips the filter otherwise)")
        if number("gamma"):
            need(given["gamma"] > 0, "gamma", "must be positive (FLARE skips the filter otherwise)")
    else:
        if number("fraction"):
            need(0 < given["fraction"] <= 1, "fraction", "must be in (0, 1]: the share of the variables sent")
        for arg in ("epsilon", "noise_var", "gamma"):
            if number(arg):
                need(given[arg] > 0, arg, "must be positive (a Laplace scale divides by it or is it)")
        number("tau")
        need(isinstance(given["replace"], bool), "replace", "must be true or false")
    return found


def train_filters(chains: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The filters a FLARE client runs on its `train` result, in order: the chain whose tasks list train
    and whose direction is out (the default) or inout."""
    for chain in chains or ():
        if "train" in chain["tasks"] and str(chain.get("direction", "out")).lower() in ("out", "inout"):
            return list(chain["filters"])
    return []


def filter_result(filters: Sequence[Mapping[str, Any]], data: Mapping[str, np.ndarray], kind: str, steps: float,
                  seed: Sequence[int]) -> dict[str, np.ndarray]:
    """`data` (a DXO's: WEIGHTS or WEIGHT_DIFF) through the chain `filters`, as FLARE's DXOFilter.process
    runs each: only on its data kinds, not on empty data. `steps` is the result's NUM_STEPS_CURRENT_ROUND
    (FLARE's default 1); `seed` seeds each filter's generator (with its position in the chain).
    Variables a filter removes are absent from the answer."""
    data = dict(data)
    for position, entry in enumerate(filters):
        name, args = class_name(entry), {**ARGS[class_name(entry)], **(entry.get("args") or {})}
        if kind not in (args.pop("data_kinds") or KINDS) or not data:
            continue
        if name == "ExcludeVars":
            data = exclude_vars(data, **args)
        elif name == "PercentilePrivacy":
            data = percentile_privacy(data, steps, **args)
        else:
            data = svt_privacy(data, steps, np.random.default_rng([*seed, position]), **args)
    return data


def sent_weights(filters: Sequence[Mapping[str, Any]], params: Mapping[str, np.ndarray], kind: str,
                 global_params: Mapping[str, np.ndarray], steps: float, seed: Sequence[int]) -> dict[str, np.ndarray]:
    """What the server receives from a site whose result `params` (WEIGHTS, or WEIGHT_DIFF from
    `global_params`) goes through `filters`, as whole weights for fedray's fold: a difference is added to
    the global model (FLARE's shareable generator does that on the server), each variable cast back to its
    dtype (as a PyTorch model loads it), and a variable a filter removed keeps its global value (FLARE's
    aggregator averages each variable over the sites that sent it, and fedray's sites all run one chain:
    a variable every site leaves out keeps its global value)."""
    out = filter_result(filters, params, kind, steps, seed)
    if kind == WEIGHT_DIFF:
        return {name: (global_params[name] + out[name]).astype(global_params[name].dtype) if name in out
                else global_params[name] for name in params}
    return {name: np.asarray(out[name]).astype(np.asarray(params[name]).dtype) if name in out
            else global_params[name] for name in params}


# ---- the three filters, as FLARE 2.4-2.5 compute them ---------------------------------------------


def exclude_vars(data: Mapping[str, np.ndarray], exclude_vars: Any = None) -> dict[str, np.ndarray]:
    """ExcludeVars: a list removes the variables of those names, a string those its regex `search`es;
    anything else (None, '', other types) removes nothing."""
    if isinstance(exclude_vars, str):
        pattern: Optional[re.Pattern] = re.compile(exclude_vars) if exclude_vars else None
        return {n: v for n, v in data.items() if pattern is None or not pattern.search(n)}
    if isinstance(exclude_vars, (list, tuple)) and all(isinstance(n, str) for n in exclude_vars):
        return {n: v for n, v in data.items() if n not in exclude_vars}
    return dict(data)


def percentile_privacy(data: Mapping[str, np.ndarray], steps: float, percentile: float = 10,
                       gamma: float = 0.01) -> dict[str, np.ndarray]:
    """PercentilePrivacy (Shokri and Shmatikov, CCS '15): per step (data / steps), the values whose absolute
    value is below the `percentile`-th percentile of all of them become 0, the rest are clipped to
    [-gamma, gamma], times steps again. Scalars (0-d) are passed. gamma <= 0 or a percentile outside
    0..100: unchanged (FLARE's skip)."""
    if gamma <= 0 or percentile < 0 or percentile > 100:
        return dict(data)
    delta_w = {name: data[name] / steps for name in data}
    all_abs_values = np.concatenate([np.abs(delta_w[name].ravel()) for name in delta_w])
    cutoff = np.percentile(a=all_abs_values, q=percentile, overwrite_input=False)
    for name in delta_w:
        diff_w = delta_w[name]
        if np.ndim(diff_w) == 0:  # a single scalar: no clipping
            delta_w[name] = diff_w * steps
            continue
        selector = (diff_w > -cutoff) & (diff_w < cutoff)
        diff_w[selector] = 0.0
        diff_w = np.clip(diff_w, a_min=-gamma, a_max=gamma)
        delta_w[name] = diff_w * steps
    return delta_w


def svt_privacy(data: Mapping[str, np.ndarray], steps: float, rng: np.random.Generator, fraction: float = 0.1,
                epsilon: float = 0.1, noise_var: float = 0.1, gamma: float = 1e-5, tau: float = 1e-6,
                replace: bool = True) -> dict[str, np.ndarray]:
    """SVTPrivacy, the sparse vector technique: all values per step (data / steps, the variables in name
    order) clipped to gamma are compared with a noisy threshold tau + Laplace(2 gamma / epsilon), each
    with Laplace(4 gamma n / eps_2) noise, eps_2 = epsilon (2n)^(2/3), until n = ceil(fraction x size)
    passed; n of those are drawn (with replacement by default), sent with Laplace(2 gamma / noise_var)
    noise, clipped to gamma; every other value is 0; times steps again. Scalars (0-d) keep their value.
    Float64 throughout (numpy 2's arithmetic for FLARE's expressions)."""
    names = sorted(data)
    delta_w = np.concatenate([np.asarray(data[name], dtype=np.float64).ravel() / np.float64(steps) for name in names])
    n_upload = np.minimum(np.ceil(np.float64(delta_w.size) * fraction), np.float64(delta_w.size))
    # eps_1: the threshold with noise
    lambda_rho = gamma * 2.0 / epsilon
    threshold = tau + rng.laplace(scale=lambda_rho)
    # eps_2: each query with noise
    eps_2 = epsilon * (2.0 * n_upload) ** (2.0 / 3.0)
    lambda_nu = gamma * 4.0 * n_upload / eps_2
    accepted: list[int] = []
    candidate_idx = np.arange(delta_w.size)
    clipped_w = np.abs(np.clip(delta_w, a_min=-gamma, a_max=gamma))
    while len(accepted) < n_upload:
        nu_i = rng.laplace(scale=lambda_nu, size=candidate_idx.shape)
        above_threshold = (clipped_w[candidate_idx] + nu_i) >= threshold
        accepted += candidate_idx[above_threshold].tolist()
        candidate_idx = candidate_idx[~above_threshold]
    chosen = rng.choice(np.asarray(accepted, dtype=np.int64), size=np.int64(n_upload), replace=replace)
    # eps_3: what is sent, with noise
    noise = rng.laplace(scale=gamma * 2.0 / noise_var, size=chosen.shape)
    delta_w[chosen] = np.clip(delta_w[chosen] + noise, a_min=-gamma, a_max=gamma)
    unsent = np.ones(delta_w.size, dtype=bool)
    unsent[chosen] = False  # FLARE: set(arange(size)) - set(accepted), as a mask (a model's millions of values)
    delta_w[unsent] = 0.0
    dp_w, start = {}, 0
    for name in names:
        if np.ndim(data[name]) == 0:
            dp_w[name] = data[name]
            start += 1
            continue
        size = np.size(data[name])
        dp_w[name] = delta_w[start:start + size].reshape(np.shape(data[name])) * np.float64(steps)
        start += size
    return {name: dp_w[name] for name in data}  # the variables in the result's own order
