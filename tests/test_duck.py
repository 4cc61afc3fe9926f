"""The night's DuckDB settings and connections (processor/duck.py)."""
from __future__ import annotations

import os

import pytest

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
    assert list((tmp_path / "spill").iterdir()) == []


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
