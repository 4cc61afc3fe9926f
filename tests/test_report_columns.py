"""The column-wise words of the reports say exactly what the one-value functions say."""
from __future__ import annotations

import markupsafe
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.reports import _plain, _text, _words, _words_of, escape, plain

# Everything a name or a title from the export may hold: control characters, every kind of space,
# line and paragraph separators, markup, quotes, letters of any script.
TEXTS = st.lists(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30)
                 | st.sampled_from(["", " ", "\u2028x\u2029", "a\r\nBcc: b", "<script>'\"&", "Núñez\u00a0O'Brien", "\x85\x1c"]),
                 min_size=1, max_size=20)


@settings(max_examples=300)
@given(TEXTS)
def test_plain_of_a_column_is_plain_of_each_value(values):
    assert _plain(values).to_pylist() == [plain(v) for v in values]
    assert _words_of(values).to_pylist() == [_words(v) for v in values]


@settings(max_examples=300)
@given(TEXTS)
def test_escape_of_a_column_is_what_jinjas_autoescape_does_to_each_value(values):
    assert escape(_text(values)).to_pylist() == [str(markupsafe.escape(v)) for v in values]
    # a slice of a column: only its own values' characters count
    inner = _text(["<&>\"'", *values, "<&>\"'"]).slice(1, len(values))
    assert escape(inner).to_pylist() == [str(markupsafe.escape(v)) for v in values]


def test_missing_values_are_empty_text():
    assert _plain([None, "x", None]).to_pylist() == ["", "x", ""]
