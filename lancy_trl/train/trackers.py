"""`--report-to`: the experiment trackers users already have, through the Trainer's own integrations, kept on this
machine. lancy's own files (run.json, metrics.json, logs/) are written whatever is chosen and stay the record.

    check(args)                      # before anything loads: known names, installed, stores local under --offline
    trackio_folder(args, parent)     # trackio's database beside the runs, before TRL imports trackio
    with local_stores(args, run_dir): # MLflow's database in the run, unless set already
    trainer_fields(args)             # TrainingArguments.report_to (the trackers lancy does not write itself)

MLflow's file store is in maintenance mode in MLflow 3, so its local store is an SQLite database (RUN/mlflow.db),
MLflow's recommended local backend. tensorboard (the default) is lancy's own writer into RUN/tensorboard, which
`lancy report` draws its curves from; none writes no tracker at all.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lancy_trl.errors import LancyError

TRACKERS = ("tensorboard", "mlflow", "trackio", "none")
PACKAGE = {"mlflow": "mlflow", "trackio": "trackio"}  # what to pip install for each
LOCAL_SCHEMES = ("file:", "sqlite:")


def chosen(args: Any) -> list[str]:
    return [t for t in getattr(args, "report_to", ["tensorboard"]) if t != "none"]


def check(args: Any) -> None:
    """One line for a tracker lancy does not know, one that is not installed, or (under --offline) a tracking store
    that is not on this machine."""
    picked = list(getattr(args, "report_to", ["tensorboard"]))
    unknown = [t for t in picked if t not in TRACKERS]
    if unknown:
        raise LancyError(f"--report-to {unknown[0]} is not a tracker lancy reports to; choose from {', '.join(TRACKERS)}")
    if "none" in picked and len(picked) > 1:
        raise LancyError("--report-to none means no tracker: give it alone, or name the trackers you want")
    for tracker in chosen(args):
        if tracker in PACKAGE and importlib.util.find_spec(tracker) is None:
            raise LancyError(f"--report-to {tracker} needs the {PACKAGE[tracker]} package: pip install {PACKAGE[tracker]}")
    own_store = "mlflow" in chosen(args) and not os.environ.get("MLFLOW_TRACKING_URI")
    if own_store and any(importlib.util.find_spec(m) is None for m in ("sqlalchemy", "alembic")):
        raise LancyError("--report-to mlflow keeps its store in an SQLite database in the run, which needs "
                         "sqlalchemy and alembic: pip install sqlalchemy alembic (or set MLFLOW_TRACKING_URI)")
    if getattr(args, "offline", False):
        remote = remote_stores(chosen(args))
        if remote:
            raise LancyError(f"--offline refuses {remote[0]}: the tracker would send the run off this machine; unset "
                             "it (lancy then keeps the tracker's store in the run directory) or drop --offline")


def remote_stores(trackers: list[str]) -> list[str]:
    """The environment settings that point a chosen tracker off this machine."""
    out = []
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if "mlflow" in trackers and uri and "://" in uri and not uri.startswith(LOCAL_SCHEMES):
        out.append(f"MLFLOW_TRACKING_URI={uri}")
    if "trackio" in trackers and os.environ.get("TRACKIO_SPACE_ID"):
        out.append(f"TRACKIO_SPACE_ID={os.environ['TRACKIO_SPACE_ID']}")
    return out


def trackio_folder(args: Any, parent: Path) -> None:
    """trackio's database in the runs' folder (PARENT/trackio/lancy.db: its dashboard compares the folder's runs),
    unless TRACKIO_DIR is set. Called before TRL loads: TRL imports trackio, which reads TRACKIO_DIR once."""
    if "trackio" not in chosen(args) or os.environ.get("TRACKIO_DIR"):
        return
    import sys

    wanted = (parent / "trackio").resolve()
    loaded = sys.modules.get("trackio.utils")
    if loaded is not None and Path(loaded.TRACKIO_DIR).resolve() != wanted:
        raise LancyError(f"trackio was imported before lancy could point it at {wanted}: set TRACKIO_DIR={wanted} "
                         "before starting Python")
    os.environ["TRACKIO_DIR"] = str(wanted)


@contextmanager
def local_stores(args: Any, run_dir: Path) -> Iterator[None]:
    """While a run trains: MLflow's store inside the run directory (unless the user set their own), the trackers'
    usage telemetry off; the environment as it was afterwards."""
    trackers = chosen(args)
    wanted: dict[str, str] = {}
    if "mlflow" in trackers:
        wanted.update(MLFLOW_TRACKING_URI=f"sqlite:///{(run_dir / 'mlflow.db').resolve()}", MLFLOW_EXPERIMENT_NAME="lancy")
    wanted = {k: v for k, v in wanted.items() if not os.environ.get(k)}  # an empty setting is no setting
    if any(t in PACKAGE for t in trackers):
        wanted.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    before = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def trainer_fields(args: Any) -> dict[str, Any]:
    """TrainingArguments for the trackers: report_to names those but TensorBoard (lancy writes its own into the run);
    trackio logs locally, under the project "lancy", and never publishes a Space after training."""
    fields: dict[str, Any] = {"report_to": [t for t in chosen(args) if t != "tensorboard"] or "none"}
    if "trackio" in chosen(args):
        fields.update(project="lancy", trackio_static_space_id=False)
    return fields
