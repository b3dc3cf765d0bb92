"""Put on PYTHONPATH by `--offline` (lancy_trl/privacy/network.py): every child Python process of an offline run guards its
sockets as its parent does, then runs the sitecustomize it would otherwise have run."""

import importlib.machinery
import importlib.util
import os
import sys


def _guard() -> None:
    if os.environ.get("LANCY_OFFLINE") != "1":
        return
    try:
        from lancy_trl.privacy import network
    except ImportError:  # another interpreter, without lancy: the environment's offline switches still apply
        return
    network.install_guard()


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.machinery.PathFinder.find_spec(
        "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != here])
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


_guard()
_chain()
