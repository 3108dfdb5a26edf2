"""Run-folder .pt files as data only: every load is `torch.load(weights_only=True)`, which runs no code
from the file (a crafted pickle's `__reduce__` is refused, not called), and states are saved in the
form that load accepts.

An algorithm's state and a site's state (FedOpt's optimizer state_dict, SCAFFOLD's control variates)
are numbers, strings, lists, tuples, dicts, torch tensors and numpy arrays. weights_only reads all but
numpy's, so `to_saved` turns each numpy array (and numpy scalar) into a marked dict holding a tensor
(or, for a dtype torch lacks, a list) and its dtype; `from_saved` turns them back, bit for bit.
Run folders written before this format pickled numpy arrays: `load(..., numpy_arrays=True)` reads
them with numpy's array-rebuilding functions allowed too (they build arrays from dtype and bytes and
call nothing else), for folders without a manifest only.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from typing import Any

import numpy as np

MARK = "__fedray_numpy__"  # a saved numpy array: {MARK: tensor or list, "dtype": numpy's dtype string}
SCALAR = "__fedray_numpy_scalar__"  # a saved numpy scalar: {SCALAR: a saved 0-d array}
PLAIN = (str, int, float, bool, bytes, type(None))


class NotPlainData(TypeError):
    """A state holds something weights_only loading could not read back; names where it is."""


def to_saved(value: Any, where: str = "state") -> Any:
    """`value` with numpy arrays and scalars as marked tensors; raises NotPlainData for any other object."""
    import torch

    if isinstance(value, np.generic):  # first: np.float64 is a float too, and would pickle as numpy's
        return {SCALAR: _array(np.asarray(value), where)}
    if isinstance(value, PLAIN) or isinstance(value, (torch.Tensor, torch.dtype, torch.Size, torch.device)):
        return value
    if isinstance(value, np.ndarray):
        return _array(value, where)
    if isinstance(value, (dict, OrderedDict)) and type(value) in (dict, OrderedDict):
        return type(value)((key, to_saved(item, f"{where}[{key!r}]")) for key, item in value.items())
    if type(value) in (list, tuple):
        return type(value)(to_saved(item, f"{where}[{index}]") for index, item in enumerate(value))
    raise NotPlainData(f"{where} is a {type(value).__name__}; a saved state holds numbers, strings, lists, "
                       "tuples, dicts, numpy arrays and torch tensors only")


def _array(array: np.ndarray, where: str) -> dict[str, Any]:
    import torch

    if array.dtype.hasobject:
        raise NotPlainData(f"{where} is a numpy array of Python objects; a saved state holds numeric arrays")
    native = array.astype(array.dtype.newbyteorder("="), copy=True)  # a copy: from_numpy shares memory
    try:
        data: Any = torch.from_numpy(native)
    except TypeError:  # a dtype torch has no tensor for (strings, some unsigned ints): its values as a list
        data = native.tolist()
    return {MARK: data, "dtype": array.dtype.str, "shape": list(array.shape)}


def from_saved(value: Any) -> Any:
    """The inverse of `to_saved`; also returns a state saved before the format (numpy arrays) as it is."""
    import torch

    if isinstance(value, dict):
        if MARK in value:
            data = value[MARK]
            array = data.numpy() if isinstance(data, torch.Tensor) else np.array(data, dtype=np.dtype(value["dtype"]))
            return array.astype(np.dtype(value["dtype"]), copy=False).reshape(value["shape"])
        if SCALAR in value:
            return from_saved(value[SCALAR])[()]
        return type(value)((key, from_saved(item)) for key, item in value.items())
    if type(value) in (list, tuple):
        return type(value)(from_saved(item) for item in value)
    return value


def dumps(value: Any) -> bytes:
    """`torch.save(value)`'s bytes (so the caller can digest what it writes)."""
    import torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def load(path: str | os.PathLike, numpy_arrays: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; `numpy_arrays`: also numpy's array rebuilding
    (run folders written before states were saved as tensors)."""
    import torch

    if not numpy_arrays:
        return torch.load(path, map_location="cpu", weights_only=True)
    with torch.serialization.safe_globals(_numpy_array_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def _numpy_array_globals() -> list[Any]:
    """What an ndarray's pickle names: its rebuild function, the class, dtype and numeric dtypes' classes,
    and the scalar rebuild (from dtype and bytes). None of them calls anything the pickle chooses."""
    multiarray = getattr(np, "_core", None) or np.core  # numpy 2 moved it; pickles name the new path
    dtypes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]
    return [multiarray.multiarray._reconstruct, multiarray.multiarray.scalar, np.ndarray, np.dtype, *dtypes]
