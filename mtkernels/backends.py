"""The one place that knows which backends exist and which kernel each provides.

A backend is a module exposing kernels for some op families; the registry
records, per backend, whether it can run on this machine (and why not), which
device types it serves, and the kernel table. Adding a backend or a kernel is
one ``register_kernels`` call; callers only ever ask ``kernel(family, name,
backend)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch

BACKEND_NAMES = ("reference", "cpu", "triton", "cuda")
ENV_VAR = "MTKERNELS_BACKEND"


@dataclasses.dataclass
class _Backend:
    name: str
    module: Optional[str]  # imported lazily on first use
    devices: Tuple[str, ...]  # device types whose tensors it accepts
    loaded: bool = False
    error: Optional[str] = None  # why it is unusable, once known
    kernels: Dict[Tuple[str, str], Callable] = dataclasses.field(default_factory=dict)


def _triton_devices() -> Tuple[str, ...]:
    # Under the interpreter Triton kernels run on CPU tensors (tests only).
    if os.environ.get("TRITON_INTERPRET") == "1":
        return ("cpu",)
    return ("cuda",)


_BACKENDS: Dict[str, _Backend] = {
    "reference": _Backend("reference", "mtkernels.reference.kernels", ("cpu", "cuda")),
    "cpu": _Backend("cpu", "mtkernels.cpu.kernels", ("cpu",)),
    "triton": _Backend("triton", "mtkernels.triton.kernels", _triton_devices()),
    "cuda": _Backend("cuda", "mtkernels.cuda.kernels", ("cuda",)),
}


def register_kernels(backend: str, family: str, **kernels: Callable) -> None:
    """Called by a backend module at import: ``register_kernels("cpu", "collab", topk=fn, ...)``."""
    entry = _BACKENDS[backend]
    for name, fn in kernels.items():
        entry.kernels[(family, name)] = fn


def _load(name: str) -> _Backend:
    entry = _BACKENDS[name]
    if not entry.loaded:
        entry.loaded = True
        try:
            module = importlib.import_module(entry.module)
            reason = getattr(module, "UNAVAILABLE_REASON", None)
            if reason:
                entry.error = reason
        except Exception as exc:  # an unbuilt extension, no triton, ...
            entry.error = f"{type(exc).__name__}: {exc}"
        if entry.error is None and name == "triton" and "cuda" in entry.devices:
            if not torch.cuda.is_available():
                entry.error = "no CUDA device (set TRITON_INTERPRET=1 to run Triton kernels on the CPU)"
        if entry.error is None and name == "cuda" and not torch.cuda.is_available():
            entry.error = "no CUDA device"
    return entry


def load_all() -> None:
    """Import every backend module now. The package does this at import, so that resolving a
    backend inside a ``torch.compile``-traced call never imports (which Dynamo cannot trace); it
    compiles nothing (extensions build on their first kernel call)."""
    for name in BACKEND_NAMES:
        _load(name)


def has_kernel(backend: str, family: str, name: str) -> bool:
    """Whether ``backend`` is usable here and provides the ``name`` kernel of op ``family``."""
    entry = _load(backend)
    return entry.error is None and (family, name) in entry.kernels


def backend_report() -> Dict[str, str]:
    """For each backend name, ``"available (devices: ...)"`` or the reason it cannot be used."""
    report = {}
    for name in BACKEND_NAMES:
        entry = _load(name)
        if entry.error is None:
            report[name] = f"available (devices: {', '.join(entry.devices)})"
        else:
            report[name] = f"unavailable: {entry.error}"
    return report


def available_backends() -> List[str]:
    """Names of the backends usable on this machine, e.g. ``["reference", "cpu"]``."""
    return [name for name in BACKEND_NAMES if _load(name).error is None]


# Preference order of `auto` for each device type.
_AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


def _serves(entry: _Backend, family: Optional[str]) -> bool:
    return family is None or any(f == family for f, _ in entry.kernels)


def resolve_backend(backend: str, device: torch.device, family: Optional[str] = None) -> str:
    """Turn a user's ``backend=`` into a concrete, usable backend name for ``device``.

    ``"auto"`` (the default) is replaced by ``$MTKERNELS_BACKEND`` when that is set, else by
    the best usable backend for the device type that has kernels of op ``family``. An explicit
    name that cannot run raises.
    """
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto") or "auto"
    if backend == "auto":
        for name in _AUTO_ORDER.get(device.type, ("reference",)):
            entry = _load(name)
            if entry.error is None and device.type in entry.devices and _serves(entry, family):
                return name
        return "reference"
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKEND_NAMES}, got {backend!r}")
    entry = _load(backend)
    if entry.error is not None:
        raise RuntimeError(f"backend {backend!r} is not available: {entry.error}")
    if device.type not in entry.devices:
        raise ValueError(
            f"backend {backend!r} runs on {'/'.join(entry.devices)} tensors, got tensors on {device}"
        )
    if not _serves(entry, family):
        raise NotImplementedError(f"backend {backend!r} has no {family} kernels")
    return backend


def whole_op(family: str, op: str, backend: str) -> Optional[Callable]:
    """The backend's kernel for the whole op ``op`` of ``family`` (registered as ``whole_<op>``), or
    None: the op is then composed from the family's kernel primitives. The reference backend
    provides every op whole (the spec); fused backends provide primitives."""
    return _load(backend).kernels.get((family, f"whole_{op}"))


def kernel(family: str, name: str, backend: str) -> Callable:
    """The ``name`` kernel of op family ``family`` on a resolved backend."""
    entry = _load(backend)
    try:
        return entry.kernels[(family, name)]
    except KeyError:
        raise NotImplementedError(f"backend {backend!r} has no {family}.{name} kernel") from None
