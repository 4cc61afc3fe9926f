"""Which facts could satisfy a policy: the SQL the policies compile to (rules.sql), run by DuckDB.

The pre-filter (processor.engine.batches) sends the engine only the facts some policy's
conditions hold for; durable-rules still decides what fires. The predicates are read from the
same condition tree and operator table as the durable-rules ruleset, so the two cannot
disagree in meaning (tests/test_sql.py, tests/test_prefilter.py).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from processor.duck import connect
from rules.model import Policy, evidence_fields
from rules.sql import any_predicate, identifier

# Each fact's position, beside the columns the predicates read (no field of the vocabulary starts with '_'):
# DuckDB returns the positions that hold, so the answer cannot depend on the order its threads return rows in.
_ROW = "_row"


def any_masks(policies: Iterable[Policy], frames: dict[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    """Per kind of the frames, which rows satisfy at least one of the policies about that kind."""
    policies = list(policies)
    with connect() as con:  # closed before returning: the engine forks its workers afterwards
        return {kind: _any_mask(con, [p for p in policies if p.about == kind], kind, frame)
                for kind, frame in frames.items()}


def _any_mask(con, policies: list[Policy], kind: str, frame: pd.DataFrame) -> np.ndarray:
    found = np.zeros(len(frame), dtype=bool)
    if not policies or not len(frame):
        return found
    fields = list(dict.fromkeys(f for p in policies for f in evidence_fields(p)))
    absent = [f for f in fields if f not in frame.columns]
    if absent:
        raise ValueError(f"the {kind} facts have no {', '.join(absent)}: the policies read them, "
                         "the facts builder should have made them")
    # A missing number (NaN) becomes NULL, as the policies read it; text and numbers are handed over without a copy.
    table = pa.table({**{f: pa.array(frame[f], from_pandas=True) for f in fields}, _ROW: np.arange(len(frame))})
    con.register("facts", table)
    try:
        rows = con.execute(f"SELECT {identifier(_ROW)} FROM facts WHERE {any_predicate(policies)}").fetchnumpy()[_ROW]
    finally:
        con.unregister("facts")
    found[rows] = True
    return found
