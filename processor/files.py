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
    lines = _json_lines(frame, tuple(json_columns))
    if lines is not None:
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(lines)
        return
    records = frame.to_dict("records")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                for c in json_columns:
                    r[c] = json.loads(r[c]) if r[c] else None
                f.write(json.dumps(r, sort_keys=False, default=str) + "\n")


def _json_lines(frame: pd.DataFrame, json_columns: tuple[str, ...]) -> list[str] | None:
    """The rows as JSON lines, built column-wise (pandas' encoder, no loop over rows in Python).

    Only for frames of text columns (what decisions are); None otherwise, and the caller
    encodes row by row. Keys keep the frame's column order; JSON columns are embedded as is."""
    plain = [c for c in frame.columns if c not in json_columns]
    if frame.empty or not all(pd.api.types.is_string_dtype(frame[c]) for c in plain):
        return None if not frame.empty else []
    pieces: list[pd.Series] = []
    segment: list[str] = []

    def flush():
        if segment:
            text = frame[segment].to_json(orient="records", lines=True, force_ascii=True)
            # pandas escapes every "/" as "\/" (valid JSON, but noisy); a "\/" is always that escape.
            inner = pd.Series(text.rstrip("\n").split("\n"), index=frame.index).str.slice(1, -1).str.replace("\\/", "/", regex=False)
            pieces.append(inner)
            segment.clear()

    for c in frame.columns:
        if c in json_columns:
            flush()
            raw = frame[c].astype(object)
            embedded = raw.where(raw.notna() & (raw != ""), "null").astype(str)
            pieces.append(f'"{c}":' + embedded)
        else:
            segment.append(c)
    flush()
    body = pieces[0]
    for p in pieces[1:]:
        body = body + "," + p
    return ("{" + body + "}\n").tolist()
