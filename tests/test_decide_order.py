"""The decisions' order, found by one Arrow sort, is pandas' stable sort of the same keys."""
from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.arrow import STR
from processor.engine.decide import _sort_order

TEXT = st.one_of(st.none(), st.sampled_from(["", "P1", "P10", "P2", "é", "Z", "a", "\u2028", "P1 "]))


@settings(max_examples=300)
@given(st.lists(st.tuples(TEXT, st.integers(0, 3), st.integers(0, 2), TEXT), max_size=40))
def test_the_arrow_sort_is_pandas_stable_sort(rows):
    frame = pd.DataFrame({
        "project_id": pd.array([r[0] for r in rows], dtype=STR),
        "rank": np.array([r[1] for r in rows], dtype=np.int64),
        "order": np.array([r[2] for r in rows], dtype=np.int64),
        "subject_id": pd.array([r[3] for r in rows], dtype=STR),
    })
    expected = frame.sort_values(list(frame.columns), kind="stable", na_position="last").index.to_numpy()
    assert _sort_order([frame[c] for c in frame.columns]).tolist() == expected.tolist()
