"""What becomes of the tasks a dead (or stuck) engine worker took down, for the local workers and Dask alike.

Every task queued on a dying worker fails with it, guilty or not: a task of several projects is split
by project in halves and sent again; a single project is tried alone (and, if it still kills its
worker, reported as not evaluated); a task without a project to evaluate is done."""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

Task = TypeVar("Task")


def split_failed(failed: list[Task], projects: Callable[[Task], Sequence],
                 subset: Callable[[Task, Sequence], Task]) -> tuple[list[Task], list[Task]]:
    """(the halves to send again, the single-project tasks to try alone) of the tasks that failed."""
    again: list[Task] = []
    alone: list[Task] = []
    for task in failed:
        pids = projects(task)
        if len(pids) == 1:
            alone.append(task)
        elif len(pids) > 1:
            half = len(pids) // 2
            again += [subset(task, pids[:half]), subset(task, pids[half:])]
    return again, alone
