"""Read a PyTorch ``state_dict`` file (``torch.save``'s zip format) into NumPy arrays, without importing torch.

The library must not depend on torch at run time (it is a test extra), yet torchvision publishes its ImageNet weights
as ``.pth`` files. Since PyTorch 1.6 ``torch.save`` writes a zip archive (``torch/serialization.py``):

* ``<archive>/data.pkl``: a pickle (protocol 2) of the object; every tensor in it is
  ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])``
  whose ``storage`` is a *persistent id* ``("storage", torch.<Type>Storage, key, location, numel)``;
* ``<archive>/data/<key>``: the raw bytes of that storage (``numel`` elements, byte order from ``<archive>/byteorder``,
  little-endian when the file is absent);
* ``<archive>/version``, ``.format_version``, ``.storage_alignment``, ``.data/serialization_id``: not needed here.

A checkpoint is untrusted input and unpickling can run arbitrary code, so :class:`_StateDictUnpickler` resolves only
the names a plain state dict uses (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and the storage
types) and refuses every other global: nothing else is imported or called. Strided (non-contiguous) tensors, views
with an offset and storages shared by several tensors are rebuilt as torch would, after a bounds check. The legacy
pre-1.6 format (a bare pickle stream) is not read.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from axial_kd_tf.errors import UserError

__all__ = ["read_torch_state_dict", "STORAGE_DTYPES"]

#: torch storage type → NumPy dtype (little-endian); ``bfloat16`` has no NumPy dtype and is widened to float32.
STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?",
}

_FIX = "delete it and download it again, or re-save it with torch.save(model.state_dict(), path)"


class _Refused(Exception):
    """A pickle asked for something a state dict does not need."""


@dataclass(frozen=True)
class _StorageType:
    """Stands for ``torch.<name>``: only ever compared, never called (calling it is a ``TypeError``)."""

    name: str


@dataclass(frozen=True)
class _Storage:
    data: np.ndarray  # 1-D, ``numel`` elements, native byte order
    name: str


class _StateDictUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that rebuilds tensors as NumPy arrays and refuses every other global."""

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, byteorder: str) -> None:
        super().__init__(file)
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise _Refused(f"it refers to '{module}.{name}', which a plain state dict does not use, so it was not loaded "
                       f"(only tensors in a dict are read)")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise _Refused(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, storage_type.name, numel)
        return self._storages[key]

    def _read_storage(self, key: str, type_name: str, numel: int) -> _Storage:
        dtype = np.dtype(STORAGE_DTYPES[type_name])
        if self._byteorder == "big":
            dtype = dtype.newbyteorder(">")
        member = f"{self._prefix}data/{key}"
        try:
            info = self._archive.getinfo(member)
        except KeyError:
            raise _Refused(f"storage '{member}' is missing") from None
        nbytes = numel * dtype.itemsize
        if numel < 0 or info.file_size < nbytes:  # checked before reading: the sizes in a damaged file are arbitrary
            raise _Refused(f"storage '{member}' holds {info.file_size} bytes, {nbytes} expected")
        data = np.frombuffer(self._archive.read(member), dtype=dtype, count=numel)
        if type_name == "BFloat16Storage":  # bfloat16 = the upper 16 bits of a float32
            data = (data.astype(np.uint32) << 16).view(np.float32)
        return _Storage(data.astype(data.dtype.newbyteorder("="), copy=False), type_name)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` for NumPy: the ``size``/``stride`` view of ``storage`` from the offset."""
    if not isinstance(storage, _Storage):
        raise _Refused("a tensor without a storage")
    ints = (lambda t: isinstance(t, tuple) and all(isinstance(v, int) and v >= 0 for v in t))
    if not (isinstance(storage_offset, int) and storage_offset >= 0 and ints(size) and ints(stride)
            and len(size) == len(stride)):
        raise _Refused(f"a tensor with offset {storage_offset!r}, size {size!r}, stride {stride!r}")
    data = storage.data
    if any(s == 0 for s in size):
        return np.zeros(size, dtype=data.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.size:  # as_strided does not check bounds: it would read past the buffer
        raise _Refused(f"a tensor reaches element {last} of a {data.size}-element storage")
    view = np.lib.stride_tricks.as_strided(data[storage_offset:], shape=size,
                                           strides=tuple(s * data.itemsize for s in stride), writeable=False)
    return np.array(view, order="C")  # a contiguous, writeable copy, independent of the storage


def _archive_prefix(archive: zipfile.ZipFile) -> str:
    """The folder holding ``data.pkl`` (torch names it after the file; any name is valid)."""
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
    if len(pickles) != 1:
        raise _Refused(f"expected one data.pkl in the archive, found {len(pickles)}")
    return pickles[0][: -len("data.pkl")]


def read_torch_state_dict(path: Union[str, Path], what: Optional[str] = None) -> dict[str, np.ndarray]:
    """The tensors of a ``torch.save(model.state_dict(), path)`` file as ``{name: np.ndarray}`` (torch not needed).

    Args:
        path: a PyTorch zip checkpoint (``torch.save`` since PyTorch 1.6, e.g. torchvision's published weights).
        what: how error messages name the file (default ``'<path>'``).

    Raises:
        UserError: (one line naming the file and the fix) the file is missing, not a PyTorch zip checkpoint, damaged,
            uses anything but plain tensors in a dict, or holds something other than a flat state dict.
    """
    path = Path(path)
    what = what or f"'{path}'"
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _archive_prefix(archive)
            byteorder = "little"
            if f"{prefix}byteorder" in archive.namelist():
                byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise _Refused(f"unknown byte order {byteorder!r}")
            with archive.open(f"{prefix}data.pkl") as pkl:
                state = _StateDictUnpickler(pkl, archive, prefix, byteorder).load()
    except FileNotFoundError:
        raise UserError(f"{what} does not exist; give the path of an existing .pth file") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a folder; give the path of a .pth file") from None
    except zipfile.BadZipFile:
        raise UserError(f"{what} is not a PyTorch zip checkpoint (damaged, truncated, or saved by torch < 1.6); "
                        f"{_FIX}") from None
    except _Refused as exc:
        raise UserError(f"cannot read {what} as a PyTorch state dict: {exc}; {_FIX}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            zipfile.LargeZipFile, OSError) as exc:  # a damaged pickle or archive surfaces as any of these
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise UserError(f"cannot read {what} as a PyTorch state dict ({reason}); {_FIX}") from None
    if not isinstance(state, dict):
        raise UserError(f"{what} holds a {type(state).__name__}, not a state dict; save model.state_dict()")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise UserError(f"{what} holds {type(value).__name__} under {key!r}, not a tensor; expected a flat state "
                            f"dict (torch.save(model.state_dict(), path))")
    return dict(state)
