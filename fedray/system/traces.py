"""Small traces in FedScale's two formats, for tests and examples: FedScale's real ones (device_capacity,
client_behave_trace) are downloads this project cannot reach.

    python -m fedray.system.traces OUT_DIR [--num-clients 100] [--seed 0]

writes OUT_DIR/device_capacity.pkl ({client_id: {"computation": ms per sample, "communication": kbit/s}}, ids
from 1 as FedScale's) and OUT_DIR/availability.pkl ({client_id: {"active": [...], "inactive": [...],
"finish_time": s, "duration": s, "model": str}}), as plain dicts, lists and floats.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np


def device_capacity(num_clients: int, seed: int = 0) -> dict[int, dict[str, float]]:
    """Log-normal devices around FedScale's typical values (tens of ms per sample, a few Mbit/s)."""
    rng = np.random.default_rng([seed, 1])
    computation = 30.0 * np.exp(0.6 * rng.standard_normal(num_clients))
    communication = 5000.0 * np.exp(0.8 * rng.standard_normal(num_clients))
    return {client: {"computation": float(computation[client - 1]), "communication": float(communication[client - 1])}
            for client in range(1, num_clients + 1)}


def availability(num_clients: int, seed: int = 0, period: float = 86400.0, sessions: int = 4,
                 online_fraction: float = 0.5) -> dict[int, dict]:
    """Each client online `sessions` times a `period`, for `online_fraction` of it in all, at seeded times."""
    rng = np.random.default_rng([seed, 2])
    traces = {}
    for client in range(1, num_clients + 1):
        length = period * online_fraction / sessions
        slots = np.sort(rng.choice(sessions * 2, size=sessions, replace=False))  # a session per chosen slot
        active = [float(slot * period / (sessions * 2)) for slot in slots]
        inactive = [start + length for start in active]
        traces[client] = {"active": active, "inactive": inactive, "finish_time": period,
                          "duration": period, "model": "generated"}
    return traces


def write(folder: str | Path, num_clients: int, seed: int = 0) -> tuple[Path, Path]:
    """Both files in `folder`; their paths (device_capacity, availability)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "device_capacity.pkl", folder / "availability.pkl"
    for path, content in zip(paths, (device_capacity(num_clients, seed), availability(num_clients, seed))):
        path.write_bytes(pickle.dumps(content, protocol=4))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--num-clients", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write(args.folder, args.num_clients, args.seed):
        print(path)


if __name__ == "__main__":
    main()
