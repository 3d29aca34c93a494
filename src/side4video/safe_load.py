"""Reading pickled inputs as data, never as code.

A pickle names callables (``GLOBAL module name``) that the standard unpickler imports and calls, so
``pickle.load`` on a forged file runs whatever it names, and ``torch.jit.load`` also runs the archive's
TorchScript. Every pickle a user passes, or a checkpoint names, goes through one of these readers instead:

* :func:`load_plain_pickle`: captions files and the like. Admits only what needs no import: dicts,
  lists, tuples, strings, bytes, numbers, booleans, None, and the harmless ``set``, ``frozenset``,
  ``OrderedDict`` and ``codecs.encode`` (how protocols 0-2 store bytes). Any other global is refused, naming it.
* :func:`read_torchscript_state_dict`: an archive written by ``torch.jit.save`` (OpenAI's CLIP files) is
  a zip of a pickled module tree (``data.pkl``), raw tensor storages (``data/<key>``) and code. Only
  ``data.pkl`` and the storages are read; the module classes become inert attribute holders and the
  code is read as text only for each class's ``__parameters__`` / ``__buffers__`` lists, so the result
  equals ``torch.jit.load(path).state_dict()`` without running anything from the file.
* :func:`load_checkpoint_data`: a zip checkpoint written by ``torch.save`` whose pickle names classes that
  ``torch.load(..., weights_only=True)`` refuses (mmengine's ``MessageHub`` / ``HistoryBuffer``, numpy
  scalars and arrays, optimizer wrappers). Tensors are rebuilt from the storages; every other named class or
  function becomes an inert :class:`Opaque` that only records its arguments and state: nothing is imported
  and nothing from the file is called.

Checkpoints and caches are read with ``torch.load(..., weights_only=True)`` first; YAML with ``safe_load``.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from typing import Any

import torch


class UnsafePickleError(ValueError):
    """A pickle that names something other than plain data, or a malformed PyTorch archive."""


_PLAIN_GLOBALS = {
    ("_codecs", "encode"): codecs.encode,  # how protocols 0-2 store bytes: encode(str, "latin1")
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,  # Python 2 pickles
    ("__builtin__", "frozenset"): frozenset,
    ("collections", "OrderedDict"): OrderedDict,
}


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="utf-8")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN_GLOBALS:
            return _PLAIN_GLOBALS[(module, name)]
        raise UnsafePickleError(f"{self.source}: refusing to load {module}.{name} from a pickle; only plain "
                                "containers, strings and numbers are read")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refusing a persistent reference in a plain-data pickle")


def load_plain_pickle(path: str | os.PathLike) -> Any:
    """The object of a pickle file made only of plain data (see the module docstring); never runs code.

    Raises :class:`UnsafePickleError` naming ``path`` and the refused global, ``OSError`` if unreadable."""
    with open(path, "rb") as f:
        try:
            return _PlainUnpickler(f, os.fspath(path)).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise UnsafePickleError(f"{os.fspath(path)}: not a readable pickle ({type(e).__name__}: {e})") from None


# ---- zip archives: torch.save checkpoints and TorchScript files ------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}
# one class of a TorchScript code file: its name, then its parameter and buffer name lists
_CLASS_RE = re.compile(r"^class (\w+)\(Module\):\n  __parameters__ = \[([^\]]*)\]\n  __buffers__ = \[([^\]]*)\]",
                       re.MULTILINE)


class ScriptModuleData:
    """An inert stand-in for a TorchScript module class: its attributes only (``state``)."""

    qualname = ""
    state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = dict(state) if isinstance(state, dict) else {}


class Opaque:
    """An inert stand-in for anything a checkpoint names that is not a tensor or a plain container.

    ``qualname`` is the name the pickle gave; calls, ``__new__``, state and appended items are only
    recorded (``args``, ``kwargs``, ``state``, ``items``), never passed to the class they name."""

    qualname = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # the arguments were kept by __new__
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Opaque:  # a REDUCE whose callable was itself unpickled
        return _opaque(f"{self.qualname}()")(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __repr__(self) -> str:
        return f"<opaque {self.qualname}>"


def _opaque(qualname: str) -> type[Opaque]:
    return type(qualname.rsplit(".", 1)[-1], (Opaque,), {"qualname": qualname})


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` on a flat tensor standing for the storage (no hooks, no grad)."""
    if not isinstance(storage, torch.Tensor):
        raise UnsafePickleError(f"a tensor whose storage is a {type(storage).__name__}")
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _rebuild_parameter(data: Any, *_: Any) -> torch.Tensor:
    """``torch._utils._rebuild_parameter``: the parameter's tensor, as a plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError(f"a parameter whose data is a {type(data).__name__}")
    return data


_TENSOR_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
}


class _ZipUnpickler(pickle.Unpickler):
    """Unpickles the ``data.pkl`` of a zip archive: tensors are read from the archive's storages; the globals
    other than tensor rebuilds, storage types and ``OrderedDict`` are left to :meth:`other_global`."""

    def __init__(self, file: io.BufferedIOBase, archive: zipfile.ZipFile, prefix: str, source: str) -> None:
        super().__init__(file)
        self.archive, self.prefix, self.source = archive, prefix, source
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _TENSOR_GLOBALS:
            return _TENSOR_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        return self.other_global(module, name)

    def other_global(self, module: str, name: str) -> Any:
        raise NotImplementedError

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise UnsafePickleError(f"{self.source}: unexpected persistent reference {pid!r:.80}")
        _, dtype, key, _location, numel = pid
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            try:
                raw = bytearray(self.archive.read(name))
            except KeyError:
                raise UnsafePickleError(f"{self.source}: archive lacks the tensor storage {name}") from None
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if flat.numel() != numel:
                raise UnsafePickleError(f"{self.source}: storage {name} holds {flat.numel()} values, "
                                        f"expected {numel}")
            self.storages[key] = flat
        return self.storages[key]


class _ArchiveUnpickler(_ZipUnpickler):
    """A TorchScript ``data.pkl``: module classes become :class:`ScriptModuleData`; other callables are refused."""

    def other_global(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (ScriptModuleData,), {"qualname": f"{module}.{name}"})
        raise UnsafePickleError(f"{self.source}: refusing to load {module}.{name} from a TorchScript archive; "
                                "only modules and plain tensors are read")


class _CheckpointUnpickler(_ZipUnpickler):
    """A ``torch.save`` ``data.pkl``: every global that is not a tensor or ``OrderedDict`` becomes :class:`Opaque`."""

    def other_global(self, module: str, name: str) -> Any:
        return _opaque(f"{module}.{name}")


def _data_record(archive: zipfile.ZipFile, source: str) -> str:
    """The prefix of the archive's ``<prefix>data.pkl`` (little-endian archives only)."""
    names = archive.namelist()
    data = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
    if data is None:
        raise UnsafePickleError(f"{source}: not a PyTorch zip archive (no data.pkl)")
    prefix = data[: -len("data.pkl")]
    order = archive.read(f"{prefix}byteorder").decode().strip() if f"{prefix}byteorder" in names else "little"
    if order != "little":
        raise UnsafePickleError(f"{source}: {order}-endian archives are not supported")
    return prefix


def _unpickle(unpickler: _ZipUnpickler) -> Any:
    try:
        return unpickler.load()
    except UnsafePickleError as err:
        if str(err).startswith(unpickler.source):
            raise
        raise UnsafePickleError(f"{unpickler.source}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, RuntimeError, IndexError,
            KeyError) as e:
        raise UnsafePickleError(f"{unpickler.source}: malformed data.pkl ({type(e).__name__}: {e})") from None


def load_checkpoint_data(path: str | os.PathLike) -> Any:
    """The object of a zip checkpoint written by ``torch.save``, read as data (see the module docstring).

    Tensors come back as CPU tensors with their own memory; classes and functions the pickle names are
    :class:`Opaque` records. Raises :class:`UnsafePickleError` naming ``path`` for anything malformed."""
    source = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise UnsafePickleError(f"{source}: not a zip checkpoint (torch.save's format since PyTorch 1.6)")
    with zipfile.ZipFile(path) as archive:
        prefix = _data_record(archive, source)
        unpickler = _CheckpointUnpickler(io.BytesIO(archive.read(f"{prefix}data.pkl")), archive, prefix, source)
        root = _unpickle(unpickler)
    return root


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip archive written by ``torch.jit.save``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("/constants.pkl") for name in zf.namelist())


def _module_members(archive: zipfile.ZipFile, prefix: str) -> dict[str, set[str]]:
    """``{"__torch__.pkg.Class": {parameter and buffer names}}`` read as text from the archive's code files."""
    members: dict[str, set[str]] = {}
    code = f"{prefix}code/"
    for name in archive.namelist():
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        module = name[len(code):-len(".py")].replace("/", ".")
        for m in _CLASS_RE.finditer(archive.read(name).decode("utf-8", errors="replace")):
            members[f"{module}.{m.group(1)}"] = set(re.findall(r'"(\w+)"', m.group(2) + m.group(3)))
    return members


def read_torchscript_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``torch.jit.load(path).state_dict()`` (parameters and buffers, dotted names) read as data only.

    Raises :class:`UnsafePickleError` naming ``path`` for an archive that is malformed or names anything
    other than module classes and tensors."""
    source = os.fspath(path)
    with zipfile.ZipFile(path) as archive:
        prefix = _data_record(archive, source)
        members = _module_members(archive, prefix)
        root = _unpickle(_ArchiveUnpickler(io.BytesIO(archive.read(f"{prefix}data.pkl")), archive, prefix, source))
    if not isinstance(root, ScriptModuleData):
        raise UnsafePickleError(f"{source}: the archive's root is a {type(root).__name__}, not a module")
    state: dict[str, torch.Tensor] = {}
    _collect(root, "", members, state)
    return {k: v.clone() for k, v in state.items()}  # own memory, not views of the read buffers


def _collect(module: ScriptModuleData, prefix: str, members: dict[str, set[str]], out: dict) -> None:
    wanted = members.get(module.qualname)  # None: the code was not found, keep every tensor attribute
    for name, value in module.state.items():
        if isinstance(value, ScriptModuleData):
            _collect(value, f"{prefix}{name}.", members, out)
        elif isinstance(value, torch.Tensor) and (wanted is None or name in wanted):
            out[f"{prefix}{name}"] = value


__all__ = [
    "Opaque", "UnsafePickleError", "is_torchscript", "load_checkpoint_data", "load_plain_pickle",
    "read_torchscript_state_dict",
]
