"""A job's own modules, importable wherever the job runs: `python_path` and the script's folder.

FLARE keeps a job's code in each app's `custom/` (the client's script, the model a persistor
names); fedray users keep theirs beside their script. `put_on_python_path` puts those folders
first on `sys.path` in the driver (so `validate` can import `model._target_`) and in each site
actor (which builds the model and runs the script).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Optional

_added: set[str] = set()  # the folders put_on_python_path put on sys.path for the latest job


def put_on_python_path(job: Mapping[str, Any], script: Optional[str] = None) -> None:
    """`job["python_path"]` and the folder of `script`, first on sys.path in this process."""
    folders = [os.path.abspath(folder) for folder in job.get("python_path", ())]
    folders += [os.path.dirname(os.path.abspath(script))] if script else []
    # An earlier job's folders leave, with the modules imported from them: two FLARE examples'
    # model.py, run from one notebook or test session, must not stand in for each other.
    earlier = _added - set(folders)
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if origin and os.path.dirname(os.path.abspath(origin)) in earlier:
            del sys.modules[name]
    for folder in earlier:
        if folder in sys.path:
            sys.path.remove(folder)
    _added.difference_update(earlier)
    for folder in reversed(folders):
        if folder not in sys.path:
            sys.path.insert(0, folder)
            _added.add(folder)
