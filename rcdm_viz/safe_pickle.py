"""A restricted unpickler for checkpoints that are pickled numpy arrays in plain containers.

``pickle.load`` runs whatever callable a pickle names; this one resolves only the three numpy names an
array needs (``_reconstruct``, ``ndarray``, ``dtype``), each wrapped so that it can build nothing but a
numeric array, and refuses every other global before anything is called. Containers (dict, list, tuple)
and scalars need no globals. The result is then checked to be nested str-keyed dicts of numeric arrays.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from rcdm_viz.errors import RcdmVizError

_NUMERIC_KINDS = "biuf"  # bool, signed / unsigned integers, floats: no objects, strings or void records
_RECONSTRUCT = {"numpy.core.multiarray", "numpy._core.multiarray"}


class RefusedPickle(RcdmVizError):
    """A pickle names something other than a numeric numpy array."""


def _numeric_dtype(obj: Any, *args: Any) -> np.dtype:
    dtype = np.dtype(obj)
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
        raise RefusedPickle(f"dtype {dtype.str!r} is not a numeric array type")
    return dtype


class _NdarrayName:
    """What the name ``numpy.ndarray`` resolves to: a token that only ``_reconstruct`` accepts, so the
    array class itself is never handed to the pickle (which could call it with an arbitrary dtype)."""


def _reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if cls is not _NdarrayName:
        raise RefusedPickle(f"array of class {getattr(cls, '__name__', cls)!r} is not a plain numpy array")
    return np.ndarray.__new__(np.ndarray, shape, _numeric_dtype(dtype_code))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` admits only the numpy array constructors (wrapped, see above)."""

    def find_class(self, module: str, name: str) -> Any:
        if module in _RECONSTRUCT and name == "_reconstruct":
            return _reconstruct
        if module == "numpy" and name == "ndarray":
            return _NdarrayName
        if module == "numpy" and name == "dtype":
            return _numeric_dtype
        raise RefusedPickle(f"it names the global '{module}.{name}'")

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("it uses persistent ids")


def _check_tree(obj: Any, where: str) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise RefusedPickle(f"{where} has a non-string key {key!r}")
            _check_tree(value, f"{where}/{key}")
    elif not isinstance(obj, np.ndarray) or obj.dtype.kind not in _NUMERIC_KINDS:
        raise RefusedPickle(f"{where or 'the top level'} holds a {type(obj).__name__}, not a numeric array")


def load_array_pickle(data: bytes, name: str) -> dict[str, Any]:
    """Nested ``{str: dict | numpy array}`` from pickle bytes ``data``; nothing else is admitted.

    Raises a one-line RcdmVizError naming ``name`` and what was refused; no callable other than the
    numpy array constructors is ever resolved, so a pickle carrying code runs nothing.
    """
    try:
        tree = _ArrayUnpickler(io.BytesIO(data)).load()
    except RefusedPickle as err:
        raise RcdmVizError(f"refused to load '{name}': {err} (only numpy arrays in dicts admitted)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise RcdmVizError(f"cannot read '{name}' as pickled numpy arrays: {err}") from None
    if not isinstance(tree, dict):
        raise RcdmVizError(f"refused to load '{name}': top level is a {type(tree).__name__}, not a dict")
    try:
        _check_tree(tree, "")
    except RefusedPickle as err:
        raise RcdmVizError(f"refused to load '{name}': {err}") from None
    return tree
