"""The night's DuckDB: the one place its settings live and connections are opened.

Every stage that runs SQL opens its connection here, with `with connect() as con:`, and
closes it before it returns: a DuckDB instance is never held across a fork of the engine's
or the outbox's workers (processor.workers).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa

# What a night may use when --memory-limit is not given: DuckDB spills past it to the temp directory.
DEFAULT_MEMORY_LIMIT = "1GB"
# The run's spill directory, inside its --out (removed when its last connection closes).
SPILL_DIRECTORY = ".duckdb-spill"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)


class MemoryLimitError(ValueError):
    """A --memory-limit DuckDB would not understand."""


def check_memory_limit(text: str) -> str:
    """The limit as DuckDB reads it ("1.5GB", "800MB"), or MemoryLimitError saying what is wanted."""
    if not _SIZE.match(text):
        raise MemoryLimitError(f"--memory-limit {text!r} is not a size: write a number and a unit, "
                               "such as 800MB or 1.5GB")
    return text.strip()


@dataclass(frozen=True)
class Settings:
    memory_limit: str = DEFAULT_MEMORY_LIMIT
    # Where DuckDB spills; None: a private directory made per connection and removed after it.
    temp_directory: Path | None = None
    threads: int | None = None


_settings = Settings()


def configure(settings: Settings) -> None:
    """Set the night's settings (the run does, from --memory-limit and --out) before any stage runs."""
    global _settings
    _settings = settings


def current() -> Settings:
    return _settings


# Connections open on several threads at once (the export's checks, the facts): the spill directory they
# share is made and removed under this lock, so that one thread never removes it while another makes its own in it.
_SPILL_LOCK = threading.Lock()


def _private_directory(parent: Path | None) -> Path:
    """A new directory for one connection's spill files, in `parent` (made when missing)."""
    with _SPILL_LOCK:
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"duckdb-{os.getpid()}-", dir=parent))


def _remove(spill: Path, parent: Path | None) -> None:
    """A connection's spill directory, and the shared one when no other connection's is left in it."""
    with _SPILL_LOCK:
        shutil.rmtree(spill, ignore_errors=True)
        if parent is not None:
            with contextlib.suppress(OSError):  # another connection's files are still there
                parent.rmdir()


@contextlib.contextmanager
def connect(threads: int | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the night's memory limit and spill directory, closed (and its
    spill files removed) on leaving the block."""
    settings = _settings
    parent = settings.temp_directory
    spill = _private_directory(parent)
    config: dict[str, str | int] = {"memory_limit": settings.memory_limit, "temp_directory": str(spill)}
    wanted = threads if threads is not None else settings.threads
    if wanted is not None:
        config["threads"] = wanted
    con = duckdb.connect(":memory:", config=config)
    try:
        yield con
    finally:
        con.close()
        _remove(spill, parent)


# DuckDB's parallel hash join: about as fast as the hand-written searches it replaced (docs/performance.md).
POSITIONS = "SELECT keys.n, ids.pos FROM keys JOIN ids ON keys.key = ids.id"


def positions(keys: pa.Array | pa.ChunkedArray, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The row of each key among `ids` (distinct text), -1 where it is missing or not there."""
    found = np.full(len(keys), -1, dtype=np.int32)
    if not len(keys) or not len(ids):
        return found
    with connect() as con:
        con.register("keys", pa.table({"key": keys, "n": pa.array(np.arange(len(keys), dtype=np.int64))}))
        con.register("ids", pa.table({"id": ids, "pos": pa.array(np.arange(len(ids), dtype=np.int32))}))
        pairs = con.sql(POSITIONS).to_arrow_table()
    found[pairs["n"].to_numpy()] = pairs["pos"].to_numpy()
    return found
