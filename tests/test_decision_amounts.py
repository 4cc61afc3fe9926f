"""A decision's amount is its cents written as decimal text with two places: exact, whatever the size or sign."""
from __future__ import annotations

import numpy as np
import pandas as pd

from processor.engine.decide import money


def test_cents_are_written_with_two_places_and_their_sign_and_a_missing_amount_is_empty():
    cents = pd.Series([12345, 5, -5, 0, 100, -100, None, 2**63 - 1, -2**63], dtype="Int64")
    assert money(cents).tolist() == ["123.45", "0.05", "-0.05", "0.00", "1.00", "-1.00", "",
                                     "92233720368547758.07", "-92233720368547758.08"]


def test_cents_in_a_float_column_after_a_join_are_written_as_the_whole_numbers_they_are():
    cents = pd.Series([150.0, np.nan, -2.0], index=[7, 3, 9])
    written = money(cents)
    assert written.tolist() == ["1.50", "", "-0.02"] and written.index.tolist() == [7, 3, 9]
