"""What a lancy process sets up before its command: third-party imports made cheaper (the same behaviour once
imported), and freed memory kept for reuse.

    startup.defer_bitsandbytes_compile()   # once per process, before any library import; the CLI's boundary calls it
    startup.keep_freed_memory()            # glibc's malloc keeps freed blocks for the next training step

bitsandbytes wraps a few of its fallback kernels in `torch.compile` at import. Building those wrappers imports
TorchDynamo's and Inductor's compiler (about a second a process on a 2-core CPU), and peft imports bitsandbytes
whenever it is installed: every run paid it, quantized or not. torch.compile compiles a function at its first call
anyway; here bitsandbytes' import gets a `torch.compile` that builds the real wrapper at that first call instead.
Only plain functions are deferred (what bitsandbytes decorates); a module, or any other caller, gets torch's own.
"""

from __future__ import annotations

import functools
import importlib.machinery
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

DEFERRED = ("bitsandbytes",)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> None:
    """glibc's malloc gives blocks over its (moving) mmap threshold pages of their own, and trims the heap's top past
    twice that threshold: memory a training step frees goes back to the kernel, and the next step's activations and
    gradients fault fresh zeroed pages in (SmolLM2-135M, full fine-tuning: about 60,000 page faults a step, a
    step about 8% slower on a 2-core EPYC). Here blocks up to 32 MB (glibc's limit) come from the heap, and the heap
    gives back only what passes 2 GB free at its top. glibc only; a MALLOC_*_ setting of the user's is kept."""
    import os

    libc = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else None
    if not (libc or "").startswith("glibc") or any(k.startswith("MALLOC_") for k in os.environ):
        return
    import ctypes

    mallopt = ctypes.CDLL(None).mallopt
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def defer_bitsandbytes_compile() -> None:
    """Install the import hook once; a no-op when bitsandbytes is already imported (its wrappers are built)."""
    if not any(isinstance(f, DeferCompile) for f in sys.meta_path):
        sys.meta_path.insert(0, DeferCompile())


class DeferCompile:
    """A finder on sys.meta_path (the protocol asks only find_spec): finds the packages in DEFERRED as the path
    finder does, and runs their top-level import under `compile_deferred` (with the submodules it imports)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in DEFERRED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            with compile_deferred():
                run(module)

        loader.exec_module = exec_module
        return spec


@contextmanager
def compile_deferred() -> Iterator[None]:
    """`torch.compile(fn, **options)` of a plain function returns a function that compiles at its first call."""
    import torch

    real = torch.compile

    def deferred(model: Any = None, **options: Any) -> Any:
        if model is None:  # used as @torch.compile(**options)
            return lambda fn: deferred(fn, **options)
        if not isinstance(model, types.FunctionType):
            return real(model, **options)
        return first_call_compiles(real, model, options)

    torch.compile = deferred  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = real


def first_call_compiles(compile: Callable[..., Any], fn: Callable[..., Any], options: dict[str, Any]) -> Any:
    compiled: Any = None

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal compiled
        if compiled is None:
            compiled = compile(fn, **options)
        return compiled(*args, **kwargs)

    return call
