"""Library messages to a file, not the terminal: what a training run logs, and the warnings `lancy eval` hides.

    with logs.to_file(run_dir / "logs" / "training.log"):   # rank 0 of a run (or its only process)
        trainer.train()
    with logs.to_file(None):                                  # the other ranks: rank 0's file already has it all
        trainer.train()
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOGGERS = ("transformers", "trl", "peft", "opacus", "lancy", "py.warnings")


@contextmanager
def to_file(path: Path | None) -> Iterator[None]:
    """While inside: every record of the libraries' loggers and lancy's goes to `path` (None: nowhere), Python
    warnings (FutureWarning, deprecations) too, and transformers' own terminal handler is off; all restored on the way
    out."""
    import warnings

    import transformers

    handler: logging.Handler = logging.NullHandler()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in LOGGERS]
    propagating = [logger.propagate for logger in loggers]
    for logger in loggers:  # not up to the root logger either, where a library may have put a terminal handler
        logger.addHandler(handler)
        logger.propagate = False
    py_warnings = logging.getLogger("py.warnings")
    propagate, py_warnings.propagate = py_warnings.propagate, False
    logging.captureWarnings(True)
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_default_handler()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
    finally:
        logging.captureWarnings(False)
        transformers.logging.enable_default_handler()
        py_warnings.propagate = propagate
        for logger, propagate in zip(loggers, propagating):
            logger.removeHandler(handler)
            logger.propagate = propagate
        handler.close()
