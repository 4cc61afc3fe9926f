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


@settings(max_examples=100, deadline=None)   # a shared machine is slow at times: tests never assert times
@given(st.lists(st.tuples(st.sampled_from(ACTIONS), st.sampled_from(["", "€1,200.00", "5.00 CHF"]),
                          st.sampled_from(["", "M1", "M 2"]), st.sampled_from(["", "late_payment"])), min_size=1,
                          max_size=25))
def test_what_each_action_says_is_what_it_says_alone(rows):
    """The rows' sentences are written an action at a time: each row still says what it says alone."""
    import pyarrow as pa

    from processor.reports.build import _actions

    def table(rows):
        return pa.table({
            "action": [r[0] for r in rows], "_money": [r[1] for r in rows], "milestone_id": [r[2] for r in rows],
            "reason": [r[3] for r in rows], "_subject_label": ["Ana"] * len(rows),
            "_assignee_label": ["Bo"] * len(rows),
            "_payee_label": ["Cy"] * len(rows), "_milestone_title": ["Logo"] * len(rows),
            "invoice_id": ["I1"] * len(rows),
            "subject_id": ["U1"] * len(rows)})

    text, money = _actions(table(rows))
    alone = [_actions(table([r])) for r in rows]
    assert text.to_pylist() == [t[0].to_pylist()[0] for t in alone]
    assert money.to_pylist() == [t[1].to_pylist()[0] for t in alone]
    assert "Close the project" in text.to_pylist() or "close_project" not in [r[0] for r in rows]


def _report_order_by_python(decisions):
    """The reports' order row by row in Python (the reference): a row's section by its state and action;
    cards of one project per section, "Act now" by the most serious action, then the oldest, then by id."""
    from processor.reports.words import ACT_NOW_ORDER, ALWAYS_ACT_NOW, PLATFORM_ACTIONS, SECTION_KEYS

    rows = decisions.astype(object).where(decisions.notna(), None).to_dict("records")
    managers = sorted({r["project_success_id"] for r in rows})

    def section(r):
        if r["state"] == "resolved":
            return "resolved"
        if r["state"] in ("new", "ongoing") and r["action"] in ALWAYS_ACT_NOW:
            return "act_now"
        if r["state"] == "new":
            return "platform" if r["action"] in PLATFORM_ACTIONS else "act_now"
        return "still_open" if r["state"] == "ongoing" else None

    rank = [SECTION_KEYS.index(section(r)) if section(r) else len(SECTION_KEYS) for r in rows]
    key = [(r["project_success_id"], rank[i] if section(r) else ("state", r["state"])) for i, r in enumerate(rows)]
    cards, firings = {}, {}
    card = [cards.setdefault((*key[i], r["project_id"]), len(cards)) for i, r in enumerate(rows)]
    firing = [firings.setdefault((*key[i], r["project_id"], r["policy_id"], r["evidence"]), len(firings))
              for i, r in enumerate(rows)]
    serious = {a.value: n for n, a in enumerate(ACT_NOW_ORDER)}
    act_now = SECTION_KEYS.index("act_now")

    def card_key(c):
        mine = [i for i in range(len(rows)) if card[i] == c]
        if rank[mine[0]] != act_now:
            return (0, 0)
        return (min(serious.get(rows[i]["action"], len(serious)) for i in mine),
                min(int(rows[i]["state"] == "new") for i in mine))

    order = sorted(range(len(rows)), key=lambda i: (managers.index(rows[i]["project_success_id"]), rank[i],
                                                    *card_key(card[i]), rows[i]["project_id"], firing[i], i))
    width = len(SECTION_KEYS) + 1
    per_section = [[sum(1 for i, r in enumerate(rows) if r["project_success_id"] == m and rank[i] == k)
                    for k in range(width)]
                   for m in managers]
    new_total = [sum(1 for r in rows if r["project_success_id"] == m and r["state"] == "new") for m in managers]
    listed = [p for m in managers for p in sorted({r["project_id"] for r in rows if r["project_success_id"] == m})]
    return order, rank, per_section, new_total, listed


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["new", "ongoing", "resolved", "flagged", "paused", ""]),
                          st.sampled_from(["flag_for_review", "notify_client", "halt_project", "resume_project"]),
                          st.sampled_from(["contact_at_risk", "x"]),
                          st.sampled_from(["PS1", "PS2"]), st.sampled_from(["P1", "P2", "P10", "Pé"]),
                          st.sampled_from(["a", "b"]), st.sampled_from(["{}", "{1}"])), min_size=1, max_size=30))
def test_report_order_is_by_section_then_the_most_serious_card_first(rows):
    import numpy as np
    import pandas as pd

    from processor.arrow import STR
    from processor.reports.build import _report_order

    columns = ["state", "action", "reason", "project_success_id", "project_id", "policy_id", "evidence"]
    decisions = pd.DataFrame({c: pd.array([r[i] for r in rows], dtype=STR if c != "state" else object)
                              for i, c in enumerate(columns)})
    order, rank, _card, _firing, per_section, _old, new_total, _m, _ms, listed, _cuts = _report_order(decisions)
    expected = _report_order_by_python(decisions)
    for a, b in zip((order, rank, per_section, new_total, listed), expected):
        assert np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["u1", "u2", " u1", "u3", ""]), st.sampled_from(["u1", "u2", "u4", ""])),
                min_size=1, max_size=20), st.sampled_from(["same", "other", "plain"]))
def test_a_lookup_of_columns_that_repeat_one_another_is_each_value_looked_up(keys, repeat):
    """_Lookup.get of several columns at once, some repeating others: every key gets its own value ('' when
    unknown, the first of a repeated key)."""
    from processor.reports.build import _Lookup

    lookup = _Lookup(["u1", "u2", "u1", " u1"], ["Ana", "Bo", "second Ana", "spaced Ana"])
    first, second = [k[0] for k in keys], [k[1] for k in keys]
    columns = [first, {"same": first, "other": second, "plain": [plain(k) for k in first]}[repeat], second]
    known = {"u1": "Ana", "u2": "Bo", " u1": "spaced Ana"}
    assert [c.to_pylist() for c in lookup.get(*columns)] == [[known.get(k, "") for k in c] for c in columns]


@settings(max_examples=200, deadline=None)
@given(TEXTS)
def test_each_cell_of_the_attachment_is_on_one_line_and_never_a_formula(values):
    """A cell's line breaks become one space, then a leading =, +, - or @ gets a ' before it."""
    import csv
    import io
    import re

    import numpy as np
    import pyarrow as pa

    from processor.reports.attachment import COLUMNS, csv_lines

    cells = [*values, "=1+1", "\r\n@x", "-2\n"]
    rows = pa.table({c: _text(cells) for c in ("project_id", "_title", "action", "amount", "currency",
                                               "_subject_label", "milestone_id", "invoice_id", "state", "policy_id")})
    lines = csv_lines(rows, np.zeros(len(cells), dtype=np.int64), _text(cells), _text(cells))
    assert len(lines) == len(cells) and all(line.endswith(b"\r\n") for line in lines)
    written = list(csv.reader(io.StringIO(b"".join(lines).decode("utf-8"), newline="")))

    def safe(cell):
        cell = re.sub("[\r\n]+", " ", cell)
        return "'" + cell if cell[:1] in ("=", "+", "-", "@") else cell

    titles = [row[COLUMNS.index("project")] for row in written]
    assert titles == [safe(c) for c in cells]
    assert [row[COLUMNS.index("why")] for row in written] == titles


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["U1", "U2", "U9", " U1", ""]),
                          st.sampled_from(["U1", "U2", "U9", "U2 ", ""]), st.sampled_from(["P1", "P2", "P9", "P1 "])),
                min_size=1, max_size=20))
def test_what_a_row_says_of_its_people_and_project_is_what_the_tables_say_of_its_ids(rows):
    """A row's subject, assignee and payee (its assignee, else its subject) by name, else by plain id, else '—';
    its project's title, client and talent: also for ids no table knows and ids that are not plain text."""
    import numpy as np
    import pandas as pd

    from processor.reports.build import _looked_up, _Lookup

    people = {"U1": "Ana", "U2": "Bo"}
    projects = {"P1": ("Logo", "U1", "U2"), "P2": ("Site", "U2", "U9")}
    ids = list(projects)
    lookups = dict(people=_Lookup(list(people), list(people.values())), milestone_titles=_Lookup([], []),
                   titles=_Lookup(ids, [projects[p][0] for p in ids]),
                   clients=_Lookup(ids, [projects[p][1] for p in ids]),
                   talents=_Lookup(ids, [projects[p][2] for p in ids]))
    columns = ("project_id", "policy_id", "action", "subject_id", "milestone_id", "invoice_id", "assignee_id",
               "amount", "currency", "reason", "evidence", "state")
    decisions = pd.DataFrame({c: [""] * len(rows) for c in columns}).assign(
        subject_id=[r[0] for r in rows], assignee_id=[r[1] for r in rows], project_id=[r[2] for r in rows],
        evidence="{}", state="new")
    said = _looked_up(decisions, np.arange(len(rows)), **lookups).to_pydict()

    def label(user):
        return people.get(user) or user or "—"

    payees = [plain(assignee or subject) for subject, assignee, _p in rows]
    assert said["_subject_label"] == [label(plain(r[0])) for r in rows]
    assert said["_assignee_label"] == [label(plain(r[1])) for r in rows]
    assert said["_payee_label"] == [label(p) for p in payees]
    assert said["_subject_name"] == [people.get(r[0], "") for r in rows]
    assert said["_title"] == [projects.get(plain(r[2]), ("",))[0] for r in rows]
    clients = [projects.get(r[2], ("", "", ""))[1] for r in rows]
    assert said["_client_id"] == clients and said["_client_name"] == [people.get(c, "") for c in clients]
    assert said["_talent_id"] == [projects.get(r[2], ("", "", ""))[2] for r in rows]
