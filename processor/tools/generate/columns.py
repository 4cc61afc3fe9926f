"""The generated columns as text, built a whole column at a time with Arrow's kernels: ids, enums,
whole numbers, money, dates, times and ratings written the way exports write them."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from processor.tools.generate.vocabulary import D

_TOD = None


def _tod_strings() -> pa.Array:
    global _TOD
    if _TOD is None:
        s = np.arange(D)
        _TOD = pa.array([f"T{h:02d}:{m:02d}:{x:02d}Z" for h, m, x in
                         zip(s // 3600, s // 60 % 60, s % 60)])
    return _TOD


# --------------------------------------------------------------------------
# string helpers (vectorised)
# --------------------------------------------------------------------------
_NULL = pa.scalar(None, pa.string())


def _nulls(valid: np.ndarray | None, arr: pa.Array) -> pa.Array:
    if valid is None or valid.all():
        return arr
    return pc.if_else(pa.array(valid), arr, _NULL)


def _ids(prefix: str, num: np.ndarray, width: int) -> pa.Array:
    s = pc.utf8_lpad(pc.cast(pa.array(num, pa.int64()), pa.string()),
                     width=width, padding="0")
    return pc.binary_join_element_wise(prefix, s, "")


def _enum(values, codes: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    out = pc.take(pa.array(list(values), pa.string()),
                  pa.array(np.asarray(codes, np.int32)))
    return _nulls(valid, out)


def _int(num: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    return _nulls(valid, pc.cast(pa.array(np.asarray(num, np.int64)), pa.string()))


def _money(cents: np.ndarray) -> pa.Array:
    cents = np.asarray(cents, np.int64)
    whole = pc.cast(pa.array(cents // 100), pa.string())
    frac = pc.utf8_lpad(pc.cast(pa.array(cents % 100), pa.string()), width=2,
                        padding="0")
    return pc.binary_join_element_wise(whole, frac, ".")


def _date(days: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    arr = pc.cast(pa.array(np.asarray(days, np.int32), pa.date32()), pa.string())
    return _nulls(valid, arr)


def _time(secs: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    secs = np.asarray(secs, np.int64)
    if valid is not None:
        secs = np.where(valid, secs, 0)
    day = _date(secs // D)
    tod = pc.take(_tod_strings(), pa.array(secs % D))
    return _nulls(valid, pc.binary_join_element_wise(day, tod, ""))



def _rating(r10: np.ndarray) -> pa.Array:
    valid = r10 >= 0
    r = np.where(valid, r10, 0)
    s = pc.binary_join_element_wise(pc.cast(pa.array(r // 10), pa.string()),
                                    pc.cast(pa.array(r % 10), pa.string()), ".")
    return _nulls(valid, s)


# --------------------------------------------------------------------------
