"""The column-wise text helpers say what Python says of each value."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.arrow import joined_between, runs

TEXTS = st.lists(st.text(max_size=8), max_size=30)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 5)), max_size=20))
def test_runs_are_each_runs_positions_end_to_end(pairs):
    starts, lengths = np.array([s for s, _n in pairs], dtype=np.int64), np.array([n for _s, n in pairs], dtype=np.int64)
    assert runs(starts, lengths).tolist() == [s + i for s, n in pairs for i in range(n)]


@settings(max_examples=200)
@given(TEXTS, st.data())
def test_joined_between_is_the_values_between_cuts_end_to_end(values, data):
    array = pa.array(["-", *values, "+"], pa.large_string()).slice(1, len(values))   # an offset into shared bytes
    cuts = sorted(data.draw(st.lists(st.integers(0, len(values)), max_size=8)))
    cuts = [0, *cuts, len(values)]
    assert joined_between(array, np.array(cuts)).to_pylist() == ["".join(values[a:b]) for a,
                                                                 b in zip(cuts[:-1], cuts[1:])]
