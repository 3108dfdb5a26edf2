"""Which bytes make a run folder's checkpoint: `checkpoint/manifest.json`, written last after each round.

It lists every file `resume=` reads (the global and best models, the sites' best local models, the
algorithm's and the sites' states) with the round it was written in, its size and its sha256. Each of
those files is written atomically with its previous version kept beside it (`*.prev.pt`), and the
manifest before it is kept too (`manifest.prev.json`); so a stop anywhere in a round's writes, a
truncated or flipped file, or a file copied in from another round is found by its digest, and `resume=`
goes on from the manifest's round (or the one before) with exactly the bytes that round wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fedray.records.atomic import write_atomic

MANIFEST = "checkpoint/manifest.json"
PREVIOUS_MANIFEST = "checkpoint/manifest.prev.json"
FORMAT = 1


def previous(path: Path) -> Path:
    """Where a checkpoint file's previous version is kept: `x.pt` -> `x.prev.pt`, beside it."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Manifest:
    """The checkpoint files as of `round` (the last round whose files were all written), by their path in
    the run folder; `facts`: what else resume needs of that round (the best round and its accuracy)."""

    run_dir: Path
    round: Optional[int] = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    # Files the manifest no longer lists, deleted once no manifest kept does: the previous one may list them.
    _forgotten: list[str] = field(default_factory=list)  # left the files since the last commit
    _leaving: list[str] = field(default_factory=list)  # left before it: gone after the next commit

    def save(self, name: str, data: bytes, current_round: int) -> None:
        """Write `data` to `name` (relative to the run folder), keeping the old file as its previous version."""
        path = self.run_dir / name
        write_atomic(path, data, previous=previous(path))
        self.files[name] = {"round": current_round, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def forget(self, name: str) -> None:
        """`name` is no longer part of the checkpoint: it leaves the manifest at the next commit, and the
        disk at the commit after (until then the previous manifest, which resume may fall back on, lists it)."""
        if self.files.pop(name, None) is not None:
            self._forgotten.append(name)

    def adopt(self, name: str, current_round: int) -> None:
        """List a file already on disk (one read from a run folder written before manifests)."""
        path = self.run_dir / name
        self.files[name] = {"round": current_round, "size": path.stat().st_size, "sha256": sha256_of(path)}

    def commit(self, current_round: int, **facts: Any) -> None:
        """Every file of `current_round` is written: say so, keeping the last manifest as the previous one."""
        self.round, self.facts = current_round, facts
        text = json.dumps({"format": FORMAT, "round": current_round, **facts, "files": self.files}, indent=1)
        write_atomic(self.run_dir / MANIFEST, text.encode(), previous=self.run_dir / PREVIOUS_MANIFEST)
        for name in self._leaving:  # listed by neither this manifest nor the previous one
            if name not in self.files:
                (self.run_dir / name).unlink(missing_ok=True)
        self._leaving, self._forgotten = self._forgotten, []


def read(run_dir: Path, name: str = MANIFEST) -> Optional[Manifest]:
    """The manifest at `name`, None if there is none; ValueError (naming it) if it cannot be read."""
    path = run_dir / name
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        files = {str(key): dict(entry) for key, entry in saved.pop("files").items()}
        manifest_round = int(saved.pop("round"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err})".splitlines()[0]) from None
    saved.pop("format", None)
    return Manifest(run_dir, manifest_round, files, saved)


def locate(manifest: Manifest) -> tuple[dict[str, Path], Optional[str]]:
    """Each listed file's path on disk: the file itself or its previous version, whichever has the listed
    size and digest; and the first problem (a file neither version of which matches), or None."""
    found: dict[str, Path] = {}
    for name, entry in sorted(manifest.files.items(), key=lambda item: _reading_order(item[0])):
        path = manifest.run_dir / name
        for candidate in (path, previous(path)):
            if _matches(candidate, entry):
                found[name] = candidate
                break
        else:
            if not path.exists():
                why = "is missing"
            elif path.stat().st_size != entry["size"]:
                why = f"has {path.stat().st_size} bytes, the manifest says {entry['size']} (truncated or replaced)"
            else:
                why = "does not have the sha256 the manifest lists (damaged or replaced)"
            return found, f"{path} {why}"
    return found, None


def _matches(path: Path, entry: dict[str, Any]) -> bool:
    try:
        return path.stat().st_size == entry["size"] and sha256_of(path) == entry["sha256"]
    except OSError:
        return False


def _reading_order(name: str) -> tuple[int, str]:
    """The global model first: its problem is the one to report when several files are off."""
    return (0 if name.startswith("models/") else 1, name)


def relative(run_dir: Path, path: Path) -> str:
    return Path(os.path.relpath(path, run_dir)).as_posix()
