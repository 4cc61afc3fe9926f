"""Writing files so that nobody ever sees half of one: write beside, fsync, rename."""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from processor import arrow as arrowtext
from processor import duck
from processor.killpoints import kill_point

# Every temporary file this program writes is `.NAME` + PARTIAL_MARK + a random part, beside
# NAME: a name nobody else makes, so that clearing a killed run's leftovers never takes a user's file.
PARTIAL_MARK = ".shakers-partial-"
# Before that mark, temporaries were mkstemp(prefix=".NAME.", suffix=".part"): eight of mkstemp's
# characters before ".part", beside an output of ours. Matched exactly, so that a killed older run's
# leftovers still go, while a user's `.notes.part` stays.
_LEGACY_PARTIAL = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.part$")
_LEGACY_OUTPUTS = (".csv", ".jsonl", ".json", ".html", ".eml", ".txt")


def temporary_beside(path: str | Path) -> tuple[int, str]:
    """A new temporary file beside `path`, named as only this program names them; (fd, path) as mkstemp."""
    path = Path(path)
    return tempfile.mkstemp(prefix=f".{path.name}{PARTIAL_MARK}", dir=path.parent)


def is_partial(path: str | Path) -> bool:
    """Whether `path` is one of this program's temporary files (see PARTIAL_MARK)."""
    name = Path(path).name
    if name.startswith(".") and PARTIAL_MARK in name:
        return True
    legacy = _LEGACY_PARTIAL.match(name)
    return legacy is not None and legacy.group("name").endswith(_LEGACY_OUTPUTS)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path in the same directory; on success it replaces `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputPathError(path.parent) from None
    try:
        fd, tmp = temporary_beside(path)
    except OSError as e:
        raise _no_space(e, path) from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        kill_point("write")  # test hook: die with the new file written beside, not yet in place
        os.replace(tmp, path)
    except OSError as e:
        raise _no_space(e, path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class DiskFull(Exception):
    """No space left where a file was being written (exit 1); `str(e)` names the path."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"no space left on the device holding {path}: free some space there (or write elsewhere) "
                         f"and run again; the file was left as it was before this run.")


def _no_space(e: OSError, path: Path) -> Exception:
    """DiskFull for a full disk (or quota), naming the file; any other OSError as it was."""
    return DiskFull(path) if e.errno in (errno.ENOSPC, errno.EDQUOT) else e


# The run directory of the night being run, for the error log of an unexpected failure (see write_error_log).
_run_directory: Path | None = None


def working_in(directory: str | Path | None) -> None:
    """Note the run directory of the night now being run (None: no night)."""
    global _run_directory
    _run_directory = None if directory is None else Path(directory)


def run_directory() -> Path | None:
    return _run_directory


def state_directory() -> Path:
    """Where this program keeps what belongs to no run: $XDG_STATE_HOME/shakers-rules (~/.local/state/…)."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "shakers-rules"


def write_error_log(error: BaseException, directory: str | Path | None = None, command: str = "") -> Path | None:
    """The traceback of `error` and the versions that ran, in DIRECTORY/error.log (the run directory
    when known, else the state directory, timestamped); its path, or None when no file could be written."""
    import datetime as dt
    import platform
    import sys
    import traceback
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    now = dt.datetime.now(dt.timezone.utc)
    text = "".join([
        f"{now.isoformat(timespec='seconds')} {command or ' '.join(sys.argv)}\n",
        f"python {platform.python_version()}, shakers-rules {version('shakers-rules')}, "
        f"durable-rules {version('durable-rules')}, pyarrow {version('pyarrow')}, pandas {version('pandas')}\n\n",
        *traceback.format_exception(error),
    ])
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    places = [Path(directory) / "error.log"] if directory else []
    places.append(state_directory() / f"error-{stamp}-{os.getpid()}.log")
    places.append(Path(tempfile.gettempdir()) / f"shakers-rules-error-{stamp}-{os.getpid()}.log")
    for place in places:
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            place.write_text(text, encoding="utf-8")
            return place
        except OSError:
            continue  # a full or read-only disk: the next place
    return None


class OutputPathError(Exception):
    """An output directory that cannot be written: a usage error (exit 2); `str(e)` says why and the fix."""

    def __init__(self, directory: Path, why: str | None = None):
        self.directory = directory
        if why is None:
            blocker = next((p for p in [directory, *directory.parents] if p.exists() and not p.is_dir()), directory)
            why = f"{blocker} is a file, not a directory. Choose another --out, or move that file away"
        super().__init__(f"cannot write into {directory}: {why}.")


def check_output_directory(directory: str | Path) -> None:
    """Raise OutputPathError unless `directory` is, or can be made, a directory this process may write
    into (checked before a night is evaluated, so that a wrong --out costs nothing)."""
    directory = Path(directory)
    existing = next(p for p in [directory, *directory.parents] if p.exists() or p == p.parent)
    if existing.exists() and not existing.is_dir():
        raise OutputPathError(directory)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(directory, f"{existing} is not writable by this user. Choose another --out, "
                                         f"or give this user write permission there")


def remove_partials(directory: str | Path) -> int:
    """Delete the temporary files a killed run of this program left in `directory` (and below); how many.

    Only this program's own temporary names (see is_partial): anything else is left alone."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    removed = 0
    for leftover in directory.rglob(".*"):
        if is_partial(leftover) and leftover.is_file():
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


# A night's CSV by DuckDB: every text column's empty value written as an empty field, like a missing one
# (DuckDB writes '""' for empty text to tell it from NULL); quoting is minimal (no comment character),
# a carriage return quoted.
def write_csv(path: str | Path, frame: pd.DataFrame):
    """The frame as CSV (header, minimal quoting, "\n" line ends, missing and empty values as empty fields):
    text and integer columns by DuckDB's writer, a frame holding anything else (floats, dates) by pandas'."""
    columns = _text_arrays(frame)
    if columns is None or any("\r" in str(name) or "\n" in str(name) for name in frame.columns):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, lineterminator="\n")
        return
    table = pa.table({str(name): values for name, values in zip(frame.columns, columns)})
    plain = ", ".join(f"NULLIF({_quoted(name)}, '') AS {_quoted(name)}" for name in table.column_names)
    with atomic_path(path) as tmp, duck.connect() as con:
        con.register("frame", table)
        con.execute(f"COPY (SELECT {plain} FROM frame) TO {_literal(str(tmp))} (FORMAT CSV, HEADER, COMMENT '')")


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def write_jsonl(path: str | Path, frame: pd.DataFrame, json_columns=()) -> pa.Array | None:
    """One JSON object per row; columns named in json_columns hold JSON text and are embedded as objects.

    Returns the lines written (without line ends) when they were built column-wise (see json_lines)."""
    lines = json_lines(frame, tuple(json_columns))
    if lines is not None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(arrowtext.joined_bytes(arrowtext.concat(lines, "\n")))
        return lines
    records = frame.to_dict("records")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                for c in json_columns:
                    r[c] = json.loads(r[c]) if r[c] else None
                f.write(json.dumps(r, sort_keys=False, default=str) + "\n")
    return None


# --------------------------------------------------------------------------- column-wise text
# JSON lines and the ledger's keys are built a column at a time with Arrow's string kernels, not row by row.

# What JSON text cannot hold as is (control characters) or pandas' encoder writes as an escape
# (those and non-ASCII): rows holding such text are left to pandas' own encoder.
_JSON_CONTROL = r"[\x00-\x1f\x7f]"


def _text_arrays(frame: pd.DataFrame) -> list[pa.Array] | None:
    """Each column as an Arrow string array (integers written out as pandas writes them), or
    None when some column holds anything else (floats, dates, mixed objects)."""
    if frame.empty:
        return None
    out = []
    for c in frame.columns:
        try:
            values = pa.array(frame[c], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # an object column mixing kinds of values
            return None
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
                or pa.types.is_integer(values.type) or pa.types.is_null(values.type)):
            return None
        out.append(values.cast(pa.large_string()))
    return out


def json_lines(frame: pd.DataFrame, json_columns: tuple[str, ...] = ()) -> pa.Array | None:
    """The rows as JSON objects (one string each, no line end), keys in the columns' order.

    Columns named in json_columns hold JSON text and are embedded as is ("" as null). Built
    column-wise for frames of text; rows holding a null, a control character or non-ASCII text
    are encoded by pandas instead (its escapes, with "/" left unescaped). None when not all
    columns are text: the caller encodes row by row."""
    columns = _text_arrays(frame)
    if columns is None:
        return None if not frame.empty else pa.array([], pa.large_string())
    unplain = np.zeros(len(frame), dtype=bool)
    # The whole line in one concatenation: literal text (braces, keys, quotes) between the values.
    parts: list = []
    opening = "{"
    for name, values in zip(frame.columns, columns):
        key = opening + json.dumps(str(name)) + ":"
        opening = ","
        if name in json_columns:
            empty = pc.fill_null(pc.equal(values, ""), True)
            if pc.any(empty).as_py():  # else no copy of the whole column (evidence is big)
                values = pc.if_else(empty, pa.scalar("null", values.type), values)
            parts += [key, values]
            continue
        if not values.null_count and arrowtext.needs_no_quoting(values):  # ids, dates, enumerations: as they are
            parts += [key + '"', values, '"']
            continue
        ascii = pc.string_is_ascii(values)
        control = pc.match_substring_regex(values, _JSON_CONTROL)
        if values.null_count or not pc.all(ascii).as_py() or pc.any(control).as_py():
            unplain |= pc.fill_null(pc.or_(pc.invert(ascii), control), True).to_numpy(zero_copy_only=False)
        for char, escaped in (("\\", "\\\\"), ('"', '\\"')):  # the backslash first
            if pc.any(pc.match_substring(values, char)).as_py():
                values = pc.replace_substring(values, char, escaped)
        parts += [key + '"', values, '"']
    lines = arrowtext.concat(*parts, "}")
    if unplain.any():
        where = np.flatnonzero(unplain)
        replaced = pa.array(_pandas_json_lines(frame.iloc[where], json_columns), pa.large_string())
        lines = pc.replace_with_mask(lines, pa.array(unplain), replaced)
    return lines


def _pandas_json_lines(frame: pd.DataFrame, json_columns: tuple[str, ...]) -> list[str]:
    """pandas' encoding of the rows (for the few json_lines cannot build column-wise)."""
    pieces: list[pd.Series] = []
    segment: list[str] = []

    def flush():
        if segment:
            text = frame[segment].to_json(orient="records", lines=True, force_ascii=True)
            # pandas escapes every "/" as "\/" (valid JSON, but noisy); a "\/" is always that escape.
            inner = pd.Series(text.rstrip("\n").split("\n"), index=frame.index).str.slice(1, -1)
            inner = inner.str.replace("\\/", "/", regex=False)
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
    return ("{" + body + "}").tolist()

