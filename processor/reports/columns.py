"""Whole columns of text: the kernels the reports are written with (pyarrow's string kernels; Python
runs once per distinct value where a column has few), and one value's plain text and money."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from processor.arrow import CONTROL as _CONTROL
from processor.arrow import concat, joined_bytes
from processor.arrow import one_line as plain
from processor.arrow import text_or_empty as _text

CURRENCY_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥"}
def format_money(amount, currency) -> str:
    """'1200.5', 'EUR' -> '€1,200.50'; unknown symbols -> '1,200.50 CHF'; '' when there is no amount."""
    text = plain(amount)
    if not text:
        return ""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return f"{text} {plain(currency)}".strip()
    code = plain(currency).upper()
    figure = f"{abs(value):,.2f}"
    sign = "-" if value < 0 else ""
    symbol = CURRENCY_SYMBOLS.get(code)
    return f"{sign}{symbol}{figure}" if symbol else f"{sign}{figure} {code}".strip()


def format_cents(cents, currency) -> str:
    return format_money(Decimal(int(cents)) / 100, currency)


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def _words(code: str) -> str:
    return plain(code).replace("_", " ")


# --------------------------------------------------------------------------- whole columns of text
# Python only runs once per *distinct* value where a column has few (amounts, evidence, first letters).
TEXT = pa.large_string()
# What plain() turns into one space: control characters and everything str.split() splits on.
_BLANK = [c for c in map(chr, range(0x3001)) if c.isspace() or _CONTROL.match(c)]
_BLANKS = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in _BLANK) + "]+"
# Text plain() changes: it has such a character other than a space, or spaces at an end or side by side.
_NOT_PLAIN = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in _BLANK if c != " ") + "]|^ | $|  "


def _arg(value):
    if isinstance(value, pa.ChunkedArray):
        return value.combine_chunks()
    return value if isinstance(value, (pa.Array, pa.Scalar)) else pa.scalar(value, TEXT)


def _cat(*pieces) -> pa.Array:
    """Columns and constants end to end, row by row; null where any piece is null."""
    return concat(*(p if isinstance(p, str) else _arg(p) for p in pieces))


def _if(mask, then, otherwise="") -> pa.Array:
    return pc.if_else(mask, _arg(then), _arg(otherwise))


def _present(values) -> pa.Array:
    """True where the text is not empty (nor null)."""
    return pc.fill_null(pc.not_equal(values, _arg("")), False)


def _or(values, otherwise) -> pa.Array:
    """`values or otherwise`, row by row."""
    return _if(_present(values), values, otherwise)


def _plain(values) -> pa.Array:
    """plain() of every value of a column."""
    values = _text(values)
    if not pc.any(pc.match_substring_regex(values, _NOT_PLAIN)).as_py():
        return values   # nothing to change (the usual case, and 4x faster to find out than to change)
    return pc.utf8_trim(pc.replace_substring_regex(values, _BLANKS, " "), " ")


def _words_of(values) -> pa.Array:
    """_words() of every value of a column."""
    return pc.replace_substring(_plain(values), "_", " ")


def escape(values) -> pa.Array:
    """markupsafe.escape() of every value of a column (what Jinja's autoescape does to one value)."""
    # Which characters occur anywhere is seen in the column's bytes at once (a byte under 0x80 is
    # always that character in UTF-8): much cheaper than a search of each value, and a copy.
    # The entities put in hold none of the characters looked for after them.
    data = np.frombuffer(joined_bytes(values), dtype=np.uint8)
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&#34;"), ("'", "&#39;")):
        if (data == ord(char)).any():
            values = pc.replace_substring(values, char, entity)
    return values


def _first_seen(*columns) -> np.ndarray:
    """A number per distinct combination of the columns' values, numbered in order of first appearance."""
    ids = np.zeros(len(columns[0]), dtype=np.int64)
    for column in columns:
        encoded = pc.dictionary_encode(_arg(column), null_encoding="encode")
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        ids = pd.factorize(ids * (len(encoded.dictionary) + 1) + codes)[0]
    return ids


def _per_distinct(function: Callable[..., str | None], *columns) -> pa.Array:
    """function(*values) for every row, called once per distinct combination of the columns' values."""
    columns = [_text(c) for c in columns]
    ids = _first_seen(*columns)
    first = pa.array(np.unique(ids, return_index=True)[1])
    distinct = zip(*(c.take(first).to_pylist() for c in columns))
    return pc.take(pa.array([function(*values) for values in distinct], TEXT), pa.array(ids))


def _choose(key, texts: Mapping[str, object], otherwise) -> pa.Array:
    """texts[key] row by row (each a column or a constant); `otherwise` for other keys."""
    masks = [pc.equal(key, _arg(k)) for k in texts]
    return pc.case_when(pc.make_struct(*masks, field_names=[str(i) for i in range(len(masks))]),
                        *map(_arg, texts.values()), _arg(otherwise))


class _Lookup:
    """Text values by text key, for whole columns of keys at once (first key wins)."""

    def __init__(self, keys, values):
        self.keys, self.values = _text(keys), _text(values)

    def get(self, *keys) -> list[pa.Array]:
        """The value of every key of each column ('' where the key is unknown); one hash of the known keys for all."""
        keys = [_text(k) for k in keys]
        at = pc.index_in(pa.concat_arrays(keys), value_set=self.keys)
        found = pc.if_else(pc.is_null(at), _arg(""), pc.take(self.values, at))
        cuts = np.cumsum([0] + [len(k) for k in keys])
        return [found.slice(start, stop - start) for start, stop in zip(cuts[:-1], cuts[1:])]
