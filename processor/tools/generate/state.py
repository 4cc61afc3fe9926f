"""What one chunk of projects is drawn in: the night (ids numbered across chunks) and the chunk's
state, which each step of the chunk reads and adds to."""

from __future__ import annotations

import datetime as _dt

import numpy as np

from processor.tools.generate.users import _Users
from processor.tools.generate.vocabulary import (
    D,
)


class _Ctx:
    def __init__(self, users: _Users, as_of: _dt.date, projects: int):
        self.u = users
        self.as_of = (as_of - _dt.date(1970, 1, 1)).days
        self.pw = max(7, len(str(projects + 1)))
        self.mw = max(8, len(str(5 * projects + 1)))
        self.iw = max(8, len(str(10 * projects + 1)))
        self.aw = max(8, len(str(12 * projects + 1)))
        self.next = dict(p=1, m=1, i=1, a=1)


class _Chunk:
    """What the steps of one chunk know: its random stream, its size, the night, and what each step drew
    for the steps after it."""

    def __init__(self, rng: np.random.Generator, n: int, ctx: _Ctx, showcase: bool):
        self.rng, self.n, self.ctx, self.showcase = rng, n, ctx, showcase
        self.u = ctx.u
        self.A = ctx.as_of
        self.END = (self.A + 1) * D - 1           # as_of 23:59:59
        self.R = rng.random

        def tod(lo_h, hi_h, size):
            return rng.integers(int(lo_h * 3600), int(hi_h * 3600), size)

        self.tod = tod

    def read(self, names: str) -> tuple:
        return tuple(getattr(self, name) for name in names.split())

    def keep(self, **values) -> None:
        vars(self).update(values)
