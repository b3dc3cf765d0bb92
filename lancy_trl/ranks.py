"""Which process of a run this is, read from the launcher's environment (one process is its own rank 0).

    if ranks.is_main(): write_the_file()
"""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Global rank 0 (a single process is its own rank 0)."""
    return rank() == 0
