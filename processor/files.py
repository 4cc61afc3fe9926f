"""Writing files so that nobody ever sees half of one: write beside, fsync, rename."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from processor.killpoints import kill_point


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path in the same directory; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        kill_point("write")  # test hook: die with the new file written beside, not yet in place
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_partials(directory: str | Path) -> int:
    """Delete the temporary `.*.part` files a killed run left in `directory` (and below); how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    removed = 0
    for leftover in directory.rglob(".*.part"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def write_text(path: str | Path, text: str):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes):
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_json(path: str | Path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | Path, frame: pd.DataFrame):
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def write_jsonl(path: str | Path, frame: pd.DataFrame, json_columns=()):
    """One JSON object per row; columns named in json_columns hold JSON text and are embedded as objects."""
    records = frame.to_dict("records")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                for c in json_columns:
                    r[c] = json.loads(r[c]) if r[c] else None
                f.write(json.dumps(r, sort_keys=False, default=str) + "\n")
