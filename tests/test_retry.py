"""The tasks a dead engine worker took down: split in halves by project, a single project tried alone,
an empty task done; no project is lost or doubled (the local workers and Dask share this)."""
from __future__ import annotations

from processor.engine.retry import split_failed


def test_failed_tasks_come_back_as_halves_and_single_projects_and_none_is_lost():
    failed = [["P1", "P2", "P3", "P4", "P5"], ["P6"], [], ["P7", "P8"]]
    again, alone = split_failed(failed, lambda task: task, lambda task, some: list(some))
    assert again == [["P1", "P2"], ["P3", "P4", "P5"], ["P7"], ["P8"]]
    assert alone == [["P6"]]
    assert sorted(p for task in again + alone for p in task) == sorted(p for task in failed for p in task)
