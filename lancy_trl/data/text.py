"""Plain text for continued pretraining: every dataset (chat and classification ones contribute their user message and
answer) as `text` rows, read whole or streamed as training goes.

    data = text_data(args)   # train, held-out slice and test as text rows; data.kind == "pretraining"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lancy_trl.errors import LancyError


def as_text(ds: Any) -> Any:
    """Plain-text rows: `text` kept, a chat row's user message and answer joined by a blank line."""
    if ds is None or "text" in ds.column_names:
        return ds

    def text(row: dict[str, Any]) -> dict[str, str]:
        user = next((m["content"] for m in reversed(row["prompt"]) if m["role"] == "user"), "")
        answer = " ".join(m["content"] for m in row["completion"])
        return {"text": f"{user}\n\n{answer}".strip()}

    return ds.map(text, remove_columns=ds.column_names)


def streams(args: Any) -> bool:
    """--streaming, or by default a registry corpus too large to download when no --max-examples cuts it."""
    if args.streaming is not None:
        return args.streaming
    from lancy_trl.data.registry import lookup

    specs = [lookup(name) for name in args.dataset]
    return not args.max_examples and any(s is not None and s.loader == "stream" for s in specs)


def text_data(args: Any) -> Any:
    """The run's data as text rows (train, held-out slice, test), mixtures included; streamed where asked."""
    from lancy_trl.data.build import build_data
    from lancy_trl.data.sources import files_as_dataset

    if not args.dataset:
        if not args.data_files:
            raise LancyError("no text to train on: pass --dataset NAME|FILE or --data-files 'PATH' (globs work)")
        first, args.data_files = files_as_dataset(args.data_files)
        args.dataset = [first]
    if streams(args):
        from lancy_trl.data.stream import streamed_text

        return streamed_text(args)
    from_files = len(args.dataset) == 1 and any(v.startswith("train=") for v in args.data_files)
    data = build_data(args, transform=as_text)
    data.kind, data.label_words = "pretraining", ()
    if from_files:  # several files of one folder: the run is named after the folder, not its first file
        data.name = Path(args.dataset[0]).resolve().parent.name or data.name
    return data
