"""The policies' SQL predicates (rules.sql) hold exactly where the editor's explanation says a
policy holds (rules.compile.explain_fact, Comparison.holds), missing values included, whether
DuckDB reads them as written or through the pre-filter (processor.engine.prefilter)."""
from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import WORDS

from processor import duck
from processor.engine.prefilter import any_masks
from rules.compile import explain_fact
from rules.model import All, Any_, Comparison, Not, Policy
from rules.sql import any_predicate, identifier, literal, predicate
from rules.vocabulary import FACT_KINDS, FLAG, NUMBER, OPERATORS

ARROW_TYPE = {NUMBER: pa.int64(), FLAG: pa.bool_()}  # else text
# Text for the fields whose values are not a closed list (ids, area), a quote and a blank among them.
OPEN_TEXT = ["P1", "it's", "Ünïcode", "", "none"]


def _type(kind: str, field: str) -> str:
    return FACT_KINDS[kind][field][0]


def _value(kind: str, field: str) -> st.SearchStrategy:
    """A value a fact's field may hold, or a comparison may name."""
    ftype = _type(kind, field)
    if ftype == NUMBER:
        return st.integers(-3, 12)
    if ftype == FLAG:
        return st.booleans()
    return st.sampled_from(WORDS.get(field, OPEN_TEXT) + ["unheard of"])


@st.composite
def comparisons(draw, kind: str) -> Comparison:
    field = draw(st.sampled_from(sorted(FACT_KINDS[kind])))
    number = _type(kind, field) == NUMBER
    op = draw(st.sampled_from([op for op, o in OPERATORS.items() if number or not o.ordered]))
    # A number may be named as a float too (the checker makes whole numbers; SQL must take any).
    value = _value(kind, field) | (st.floats(-3, 12) if number else st.nothing())
    if OPERATORS[op].members:
        return Comparison(field, op, tuple(draw(st.lists(value, min_size=1, max_size=3))))
    return Comparison(field, op, draw(value))


def conditions(kind: str) -> st.SearchStrategy:
    return st.recursive(comparisons(kind), lambda inner: st.one_of(
        st.tuples(st.lists(inner, min_size=1, max_size=3), st.sampled_from([None, "named"])).map(
            lambda parts: All(tuple(parts[0]), parts[1])),
        st.lists(inner, min_size=1, max_size=3).map(lambda items: Any_(tuple(items))),
        inner.map(Not)), max_leaves=8)


def facts(kind: str) -> st.SearchStrategy[list[dict]]:
    """Facts of one kind, any field of which may be missing (None)."""
    one = st.fixed_dictionaries({f: _value(kind, f) | st.none() for f in FACT_KINDS[kind]})
    return st.lists(one, max_size=25)


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(sorted(FACT_KINDS)))
    whens = draw(st.lists(conditions(kind), min_size=1, max_size=4))
    policies = [Policy(f"p{i}", "", kind, All((w,)), ()) for i, w in enumerate(whens)]
    return kind, policies, draw(facts(kind))


def typed_table(kind: str, rows: list[dict]) -> pa.Table:
    """The facts as the vocabulary types their fields, a missing value NULL, and each row's position."""
    columns = {f: pa.array([r[f] for r in rows], ARROW_TYPE.get(_type(kind, f), pa.string()))
               for f in FACT_KINDS[kind]}
    return pa.table({**columns, "i": pa.array(range(len(rows)), pa.int64())})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_each_predicate_holds_where_the_explanation_says_the_policy_holds_and_is_never_null(case):
    kind, policies, rows = case
    table = typed_table(kind, rows)
    select = ", ".join(f"{predicate(p)} AS {identifier(p.id)}" for p in policies)
    with duckdb.connect() as con:
        con.register("facts", table)
        got = con.execute(f"SELECT {select}, {any_predicate(policies)} AS any_ FROM facts ORDER BY i").fetchall()
    for row, fact in zip(got, rows):
        expected = [explain_fact(p, fact)[0] for p in policies]
        assert list(row) == [*expected, any(expected)], (fact, [predicate(p) for p in policies])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_the_prefilter_keeps_the_facts_some_policy_holds_for_whatever_pandas_made_of_the_missing_values(case):
    kind, policies, rows = case
    # pandas' own reading of the facts: a number with a missing value is a float NaN, a flag an object.
    frame = pd.DataFrame(rows, columns=list(FACT_KINDS[kind]))
    got = any_masks(policies, {kind: frame, "elsewhere": frame})
    assert got[kind].tolist() == [any(explain_fact(p, fact)[0] for p in policies) for fact in rows]
    assert not got["elsewhere"].any()  # no policy is about that kind


def test_a_big_frame_in_many_pieces_is_cut_row_for_row():
    # Several Arrow chunks and DuckDB threads: the positions still land on their own rows.
    n = 300_000
    area = pd.array(["x", "design"] * (n // 6), "str")
    pieces = [pd.DataFrame({"days_on_hold": np.arange(i, n, 3), "area": area}) for i in range(3)]
    frame = pd.concat(pieces, ignore_index=True)
    when = All((Comparison("days_on_hold", "gte", n // 2), Comparison("area", "eq", "design")))
    policy = Policy("p", "", "project", when, ())
    duck.configure(duck.Settings(threads=2))
    try:
        got = any_masks([policy], {"project": frame})["project"]
    finally:
        duck.configure(duck.Settings())
    expected = (frame["days_on_hold"].to_numpy() >= n // 2) & (frame["area"] == "design").to_numpy()
    assert expected.any() and not expected.all()
    assert (got == expected).all()


def test_a_field_the_facts_lack_is_named_not_guessed():
    policy = Policy("p", "", "invoice", All((Comparison("days_overdue", "gt", 3),)), ())
    with pytest.raises(ValueError, match="the invoice facts have no days_overdue"):
        any_masks([policy], {"invoice": pd.DataFrame({"amount_cents": [1, 2]})})


@given(st.text() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.booleans())
def test_a_literal_reads_back_as_the_very_value(value):
    with duckdb.connect() as con:
        got = con.execute(f"SELECT {literal(value)}").fetchone()[0]
    assert got == value and type(got) is type(value)


def test_a_value_sql_cannot_hold_is_refused_with_a_sentence():
    for value in (float("nan"), float("inf"), None, ("a",)):
        with pytest.raises(ValueError, match="which SQL cannot hold"):
            literal(value)


def test_an_identifier_with_a_quote_names_its_column():
    name = '"odd" name'
    with duckdb.connect() as con:
        assert con.execute(f"SELECT 1 AS {identifier(name)}").description[0][0] == name
