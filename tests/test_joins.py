"""processor.engine.facts' joins by position look up each run of equal keys once; the answer must be the
plain one whatever the order, widths and gaps of the keys."""
from __future__ import annotations

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.engine.facts import positions

# Ids of one width or of several, and some missing.
ID = st.sampled_from(["P01", "P02", "P03", "P10", "P11", "P7", "P100", "Q01"])
# Ids longer than 8 bytes.
LONG_ID = st.sampled_from(["M000000001", "M000000002", "M000000010", "M000000100", "M100000000", "N000000001"])


def text(values) -> pd.Series:
    return pd.Series(values, dtype="str")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.tuples(st.lists(ID, unique=True), st.lists(ID)),
                 st.tuples(st.lists(LONG_ID, unique=True), st.lists(LONG_ID))), st.booleans(), st.booleans())
def test_positions_is_the_row_of_each_key_or_minus_one(ids_and_keys, sort_ids, sort_keys):
    ids, keys = ids_and_keys
    ids, keys = (sorted(ids) if sort_ids else ids), (sorted(keys) if sort_keys else keys)
    expected = [ids.index(k) if k in ids else -1 for k in keys]
    assert positions(text(keys), text(ids)).tolist() == expected

