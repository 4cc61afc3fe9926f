"""The column-wise words of the reports say exactly what the one-value functions say."""
from __future__ import annotations

import markupsafe
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import cell_text

from processor.reports.build import _plain, _text, _words, _words_of, escape, plain

# Everything a name or a title from the export may hold: control characters, every kind of space,
# line and paragraph separators, markup, quotes, letters of any script.
TEXTS = st.lists(cell_text(30)
                 | st.sampled_from(["", " ", "\u2028x\u2029", "a\r\nBcc: b", "<script>'\"&", "Núñez\u00a0O'Brien",
                                    "\x85\x1c"]),
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


ACTIONS = ["halt_project", "request_talent_decision", "release_milestone_payment", "close_project", "notify_client",
           "notify_talent", "reject_user", "assign_top_shaker", "reassign_milestone", "notify_talent_non_payment",
           "resume_project", "flag_for_review", "some_new_action", ""]


@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from(ACTIONS), st.sampled_from(["", "€1,200.00", "5.00 CHF"]),
                          st.sampled_from(["", "M1", "M 2"]), st.sampled_from(["", "late_payment"])),
                min_size=1, max_size=25))
def test_what_each_action_says_is_what_it_says_alone(rows):
    """The rows' sentences are written an action at a time: each row still says what it says alone."""
    import pyarrow as pa

    from processor.reports.build import _actions

    def table(rows):
        return pa.table({
            "action": [r[0] for r in rows], "_money": [r[1] for r in rows], "milestone_id": [r[2] for r in rows],
            "reason": [r[3] for r in rows], "_subject_label": ["Ana"] * len(rows),
            "_assignee_label": ["Bo"] * len(rows), "_payee_label": ["Cy"] * len(rows),
            "_milestone_title": ["Logo"] * len(rows), "invoice_id": ["I1"] * len(rows),
            "subject_id": ["U1"] * len(rows)})

    text, money = _actions(table(rows))
    alone = [_actions(table([r])) for r in rows]
    assert text.to_pylist() == [t[0].to_pylist()[0] for t in alone]
    assert money.to_pylist() == [t[1].to_pylist()[0] for t in alone]
    assert "Close the project" in text.to_pylist() or "close_project" not in [r[0] for r in rows]


def _report_order_by_pandas(decisions):
    """The reports' order as first written, a row's section by name (the reference)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from processor.reports.build import AT_RISK_REASON, SECTION_KEYS, _first_seen

    flagged = (decisions["action"] == "flag_for_review").to_numpy(dtype=bool, na_value=False)
    at_risk = flagged & (decisions["reason"] == AT_RISK_REASON).to_numpy(dtype=bool, na_value=False)
    state = decisions["state"].astype(object).to_numpy()
    section = np.select([state == "resolved", at_risk, flagged], ["resolved", "at_risk", "flagged"],
                        state).astype(object)
    manager, managers = pd.factorize(decisions["project_success_id"], sort=True)
    rank = pd.Series(section).map({k: i for i, k in enumerate(SECTION_KEYS)}).fillna(len(SECTION_KEYS)).to_numpy(int)
    firing = _first_seen(pa.array(manager), pa.array(section), *(pa.array(decisions[c], from_pandas=True)
                                                                 for c in ("project_id", "policy_id", "evidence")))
    order = np.lexsort((firing, rank, manager))
    width = len(SECTION_KEYS) + 1
    per_section = np.bincount(manager * width + rank, minlength=len(managers) * width).reshape(len(managers), width)
    new_total = np.bincount(manager, weights=(state == "new"), minlength=len(managers))
    pairs = (pd.DataFrame({"m": manager, "p": decisions["project_id"].astype(str).to_numpy()})
             .drop_duplicates().sort_values(["m", "p"]))
    cuts, listed = np.searchsorted(pairs["m"].to_numpy(), np.arange(len(managers) + 1)), pairs["p"].tolist()
    return order, rank, firing, per_section, new_total, manager, list(managers), listed, cuts


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["new", "ongoing", "resolved", "flagged", "paused", ""]),
                          st.sampled_from(["flag_for_review", "notify_client"]),
                          st.sampled_from(["contact_at_risk", "x"]),
                          st.sampled_from(["PS1", "PS2"]), st.sampled_from(["P1", "P2", "P10", "Pé"]),
                          st.sampled_from(["a", "b"]), st.sampled_from(["{}", "{1}"])), min_size=1, max_size=30))
def test_report_order_is_the_order_by_section_names(rows):
    import numpy as np
    import pandas as pd

    from processor.arrow import STR
    from processor.reports.build import _report_order

    columns = ["state", "action", "reason", "project_success_id", "project_id", "policy_id", "evidence"]
    decisions = pd.DataFrame({c: pd.array([r[i] for r in rows], dtype=STR if c != "state" else object)
                              for i, c in enumerate(columns)})
    got, expected = _report_order(decisions), _report_order_by_pandas(decisions)
    for a, b in zip(got, expected):
        assert np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
