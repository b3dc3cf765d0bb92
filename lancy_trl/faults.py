"""Named fault points in a run's life, for the crash-safety tests (tests/faults/): off unless LANCY_FAULT names one.

    LANCY_FAULT=checkpoint.state@2 lancy sft ...     # SIGKILL itself the 2nd time a checkpoint's state is written
    LANCY_FAULT=finish.model:enospc lancy sft ...    # the final save fails as on a full disk

`POINT[@N][:ACTION]`: at the Nth time (default the 1st) this process reaches POINT, ACTION happens: `kill` (SIGKILL,
the default: nothing runs after it, as with `kill -9`), `stop` (SIGSTOP: the test changes the world, e.g. fills the
disk, then continues the process), `enospc` / `eacces` / `erofs` (an OSError as a write would raise). The points:

    step                 inside an optimizer step: gradients computed, not yet applied
    eval                 inside the in-training evaluation
    checkpoint.weights   a checkpoint's weights written, its optimizer state not yet
    checkpoint.state     all of a checkpoint written but trainer_state.json, the file that completes it
    runjson              run.json's new text written aside, not yet renamed over the old
    finish.model         the final model written to model.part, not yet renamed to model/
    finish.rename        model/ in place; metrics.json, manifest.json and the `complete` status not yet written
    finish.metrics       metrics.json's new text written aside, not yet renamed
    finish.manifest      manifest.json's new text written aside, not yet renamed
    export.merged        an export's merged model written aside, not yet renamed
    export.gguf          a GGUF file converted, not yet verified and renamed
"""

from __future__ import annotations

import errno
import os
import signal

POINTS = ("step", "eval", "checkpoint.weights", "checkpoint.state", "runjson", "finish.model", "finish.rename",
          "finish.metrics", "finish.manifest", "export.merged", "export.gguf")
ERRORS = {"enospc": errno.ENOSPC, "eacces": errno.EACCES, "erofs": errno.EROFS}
_hits: dict[str, int] = {}


def parse(spec: str) -> tuple[str, int, str]:
    """(point, occurrence, action) from `POINT[@N][:ACTION]`."""
    where, _, action = spec.partition(":")
    name, _, nth = where.partition("@")
    action = action or "kill"
    if name not in POINTS or (nth and not nth.isdigit()) or action not in ("kill", "stop", *ERRORS):
        raise ValueError(f"LANCY_FAULT={spec!r}: expected POINT[@N][:ACTION] with POINT one of {', '.join(POINTS)} and "
                         f"ACTION kill, stop, {', '.join(ERRORS)}")
    return name, int(nth or 1), action


def point(name: str, path: str | os.PathLike | None = None) -> None:
    """A place where a fault can be injected: nothing happens unless LANCY_FAULT names it (one environment lookup)."""
    spec = os.environ.get("LANCY_FAULT")
    if not spec:
        return
    want, nth, action = parse(spec)
    if want != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    else:
        code = ERRORS[action]
        raise OSError(code, os.strerror(code), str(path) if path else None)
