"""The night's DuckDB settings and connections (processor/duck.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import AS_OF, POLICIES
from processor import duck
from processor.workers import forked_pool


@pytest.fixture(autouse=True)
def _default_settings():
    yield
    duck.configure(duck.Settings())


def test_a_connection_has_the_nights_memory_limit_and_leaves_no_spill_directory(tmp_path):
    duck.configure(duck.Settings(memory_limit="300MB", temp_directory=tmp_path / "spill"))
    with duck.connect(threads=1) as con:
        limit, = con.execute("SELECT current_setting('memory_limit')").fetchone()
        threads, = con.execute("SELECT current_setting('threads')").fetchone()
        spill, = con.execute("SELECT current_setting('temp_directory')").fetchone()
        assert os.path.isdir(spill)
    assert limit.replace(" ", "").upper() in {"286.1MIB", "300.0MB", "286.0MIB"}
    assert threads == 1
    assert not os.path.exists(spill)
    assert not (tmp_path / "spill").exists()  # the run's spill directory goes with its last connection


@pytest.mark.parametrize("text", ["lots", "12", "1.5 parsecs", "-1GB", ""])
def test_a_memory_limit_without_a_unit_is_refused_with_an_example(text):
    with pytest.raises(duck.MemoryLimitError, match="such as 800MB"):
        duck.check_memory_limit(text)


def test_a_memory_limit_with_a_unit_is_kept():
    assert duck.check_memory_limit(" 1.5GB ") == "1.5GB"


def _sum_in_child(n: int) -> int:
    with duck.connect() as con:
        return int(con.execute(f"SELECT sum(i) FROM range({n}) t(i)").fetchone()[0])


def test_workers_forked_after_the_run_used_duckdb_can_use_it_themselves():
    # The parent uses (and closes) DuckDB first, as a night's read and checks do before the engine forks.
    assert _sum_in_child(1000) == 499500
    with forked_pool(2) as pool:
        assert list(pool.map(_sum_in_child, [10, 100, 1000], timeout=120)) == [45, 4950, 499500]


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_memory_limit_that_is_not_a_size_stops_the_run_with_a_sentence_before_anything_is_read(tmp_path, how):
    export = tmp_path / "export"
    args = ["run", "--export", str(export), "--out", str(tmp_path / "out"), "--ledger", str(tmp_path / "l.sqlite")]
    env = {**os.environ, "SHAKERS_MEMORY_LIMIT": "2 lots"} if how == "environment" else None
    done = subprocess.run([sys.executable, "-m", "processor.cli", *args,
                           *(["--memory-limit", "2 lots"] if how == "option" else [])],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert "'2 lots' is not a size: write a number and a unit, such as 800MB or 1.5GB" in done.stderr
    assert ("$SHAKERS_MEMORY_LIMIT" in done.stderr) == (how == "environment")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "l.sqlite").exists()


def test_a_run_gives_duckdb_its_memory_limit_and_a_spill_directory_in_its_out_that_it_leaves_clean(
        tmp_path, generated_nights):
    from processor.run import run_night

    out = tmp_path / "out"
    stale = out / duck.SPILL_DIRECTORY / "duckdb-4242-abc"  # what a killed run leaves
    stale.mkdir(parents=True)
    (stale / "spill.tmp").write_bytes(b"x" * 100)
    run_night(generated_nights(projects=300, seed=3, fmt="csv"), policies_path=POLICIES, as_of=AS_OF, out_dir=out,
              ledger_path=tmp_path / "l.sqlite", workers=0, memory_limit="512MB")
    assert duck.current() == duck.Settings(memory_limit="512MB", temp_directory=out / duck.SPILL_DIRECTORY)
    assert not (out / duck.SPILL_DIRECTORY).exists()
    assert (out / "decisions.csv").is_file()


def test_connections_opened_and_closed_on_many_threads_at_once_share_the_spill_directory(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    duck.configure(duck.Settings(temp_directory=tmp_path / "spill"))

    def one(_):
        with duck.connect(threads=1) as con:
            return con.execute("SELECT 41 + 1").fetchone()[0]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(400))) == [42] * 400
    assert not (tmp_path / "spill").exists()


def test_positions_are_the_row_of_each_key_among_the_ids_or_minus_one():
    import pyarrow as pa

    ids = pa.array(["U2", "U1", "U10"], pa.large_string())
    keys = pa.chunked_array([pa.array(["U1", None], pa.large_string()), pa.array(["U3", "U10", "U1"],
                                                                                  pa.large_string())])
    assert duck.positions(keys, ids).tolist() == [1, -1, -1, 2, 1]
    assert duck.positions(pa.array([], pa.large_string()), ids).tolist() == []
