"""The nights the bench measures: generated into its cache, or given as directories (--night-dir), and
the read floor of each (pandas merely reading its five files)."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("users", "projects", "milestones", "invoices", "contact_attempts")
FORMATS = ("parquet", "csv")
AS_OF = "2026-11-24"
SEED = 5


class NightError(ValueError):
    """A night directory the bench cannot use; the message is the sentence to print."""


@dataclass(frozen=True)
class Night:
    path: Path
    projects: int
    format: str
    as_of: str

    @property
    def key(self) -> tuple[int, str]:
        return self.projects, self.format

    @property
    def label(self) -> str:
        return f"{self.projects:,} {self.format}"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cli() -> list[str]:
    exe = Path(sys.executable).with_name("shakers-rules")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "processor.cli"]


def night_from_dir(path: Path) -> Night:
    """The night in an export directory: its size and date from manifest.json, its format from the files."""
    manifest_path = path / "manifest.json"
    if not path.is_dir():
        raise NightError(f"--night-dir {path}: no such directory")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        projects = int(manifest["tables"]["projects"]["rows"])
        as_of = dt.date.fromisoformat(str(manifest["exported_at"])[:10]).isoformat()
    except FileNotFoundError:
        raise NightError(f"--night-dir {path}: no manifest.json (a night is whole once generate has written it)"
                         ) from None
    except (ValueError, KeyError, TypeError):
        raise NightError(f"--night-dir {path}: manifest.json does not give the projects' rows and "
                         "exported_at as `shakers-rules generate` writes them") from None
    present = [fmt for fmt in FORMATS if all((path / f"{t}.{fmt}").is_file() for t in TABLES)]
    if len(present) != 1:
        wanted = ", ".join(f"{t}.parquet" for t in TABLES)
        raise NightError(f"--night-dir {path}: expected the five tables in one format ({wanted}, "
                         "or the same names in .csv)")
    return Night(path, projects, present[0], as_of)


def nights_from_dirs(paths: list[Path]) -> list[Night]:
    """The --night-dir nights, at most one per size and format."""
    nights: dict[tuple[int, str], Night] = {}
    for path in paths:
        night = night_from_dir(path)
        if night.key in nights:
            raise NightError(f"--night-dir {path} and {nights[night.key].path} are both {night.label} nights: "
                             "give one of each size and format")
        nights[night.key] = night
    return list(nights.values())


def generator_version() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "processor" / "tools" / "generate").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def cached_night(cache: Path, projects: int, fmt: str) -> Night:
    """The night of `projects` in `fmt` from the cache; generated on first use (the key includes the
    generator's code, so a changed generator makes new nights)."""
    where = cache / f"{fmt}-{projects}-seed{SEED}-{AS_OF}-{generator_version()}"
    if not (where / "manifest.json").is_file():
        tmp = where.with_name(where.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        say(f"generating {projects:,} projects as {fmt} into {where} ...")
        started = time.perf_counter()
        subprocess.run(cli() + ["generate", "--projects", str(projects), "--seed", str(SEED), "--format", fmt,
                                "--as-of", AS_OF, "--out", str(tmp)], check=True, stdout=subprocess.DEVNULL)
        tmp.rename(where)
        say(f"  generated in {time.perf_counter() - started:.0f}s")
    return Night(where, projects, fmt, AS_OF)


def read_floor(night: Night, repeats: int) -> tuple[float, float]:
    """Wall and CPU seconds pandas takes merely to read the five files (the best of `repeats` by wall)."""
    import pandas as pd

    best = (float("inf"), 0.0)
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        for name in TABLES:
            if night.format == "parquet":
                frame = pd.read_parquet(night.path / f"{name}.parquet")
            else:
                frame = pd.read_csv(night.path / f"{name}.csv")
            del frame
        best = min(best, (time.perf_counter() - started, time.process_time() - cpu))
    return best
