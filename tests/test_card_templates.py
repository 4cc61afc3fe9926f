"""An email card's markup is the fragments of templates/card.html and card.txt: each one a card needs is
there, and a typo in a template is a sentence naming the fragment, never a card that quietly says less."""
from __future__ import annotations

import re
from importlib import resources

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import processor.reports.cards as cards
from processor.reports.cards import FRAGMENTS, fragments

SOURCES = ["card.html", "card.txt"]


def shipped(source: str) -> str:
    return (resources.files("processor.reports") / "templates" / source).read_text("utf-8")


def template(**bodies: str) -> str:
    """A template with every fragment, empty but for `bodies`."""
    return "A note.\n" + "".join(f"[{name}]\n{bodies.get(name, '')}\n" for name in FRAGMENTS)


@pytest.mark.parametrize("source", SOURCES)
def test_each_shipped_template_has_every_fragment_a_card_needs(source):
    assert sorted(fragments(source)) == sorted(FRAGMENTS)


def test_the_html_card_uses_only_classes_the_report_styles_and_keeps_its_edge_inline():
    style = re.search(r"<style>(.*)</style>", shipped("report.html"), re.S).group(1)
    used = {c for classes in re.findall(r'class="([^"]+)"', shipped("card.html")) for c in classes.split()}
    assert used and all(re.search(rf"\.{c}\b", style) for c in used)
    assert 'style="border-left:4px solid {border}"' in shipped("card.html")


@pytest.mark.parametrize("source", SOURCES)
def test_a_missing_or_repeated_fragment_is_named(source):
    with pytest.raises(ValueError, match=re.escape(f"{source}: fragment [why] missing")):
        fragments(source, re.sub(r"(?m)^\[why\].*\n", "", shipped(source)))
    with pytest.raises(ValueError, match=re.escape("[rule]")):
        fragments(source, shipped(source) + "[rule]\nagain\n")


@pytest.mark.parametrize("typo, fragment", [
    ("{clinet}", "open"),        # a misspelt field
    ("{amount}", "open"),        # another fragment's field
    ("{talent:>9}", "rule"),     # a format of str.format's: not a field of ours
    ("{talent", "close"),        # a brace left open
])
def test_a_field_a_fragment_may_not_name_fails_with_a_sentence_naming_the_fragment(typo, fragment):
    with pytest.raises(ValueError) as caught:
        fragments("mine.html", template(**{fragment: f"<p>{typo}</p>"}))
    said = str(caught.value)
    assert said.startswith(f"mine.html: fragment [{fragment}] has ")
    assert (typo if typo.endswith("}") else "a lone { or }") in said
    assert ", ".join(FRAGMENTS[fragment]) in said             # what it may name instead


LITERAL = st.text(st.characters(exclude_characters="{}[", exclude_categories=["Cs"]), max_size=12)


@settings(max_examples=200)
@given(st.data())
def test_a_fragment_is_its_lines_as_written_less_the_last_line_break(data):
    written = {name: data.draw(st.lists(st.tuples(LITERAL, st.sampled_from(fields)), max_size=3))
               for name, fields in FRAGMENTS.items()}
    ends = {name: data.draw(LITERAL) for name in FRAGMENTS}
    bodies = {name: "".join(f"{text}{{{field}}}" for text, field in pairs) + ends[name]
              for name, pairs in written.items()}
    assert fragments("drawn.txt", template(**bodies)) == {name: [*pairs, (ends[name], "")]
                                                         for name, pairs in written.items()}


def test_the_cards_say_what_the_templates_say(monkeypatch):
    edited = {"card.html": shipped("card.html").replace("Rule <code>", "Policy <code>"),
              "card.txt": shipped("card.txt").replace("  Rule ", "  Policy ")}
    read = cards.fragments
    monkeypatch.setattr(cards, "fragments", lambda source: read(source, edited[source]))
    item = {name: pa.array([value] * 3, pa.large_string()) for name, value in [
        ("project_id", "P1"), ("title", "Shop"), ("client", "C"), ("talent", "T"), ("policy_id", "p"),
        ("state", "new"), ("border", "#000")]}
    item["link"] = pa.array(["https://x.test/P1?a&b", "", ""], pa.large_string())
    item["why"] = pa.array(["Because <late>.", "", ""], pa.large_string())
    item["description"] = pa.array(["", "What p checks.", ""], pa.large_string())
    opens, closes = np.array([True, False, False]), np.array([False, False, True])
    texts, money = pa.array(["Halt", "Pay"], pa.large_string()), pa.array(["", "€5.00"], pa.large_string())
    head, tail, action = cards._pieces("card.txt", item, opens, closes, texts, money)
    assert head.to_pylist() == ["* Shop (P1) https://x.test/P1?a&b\n  Client: C | Talent: T\n", "", ""]  # 1st opens
    assert tail.to_pylist() == ["  Why: Because <late>.\n  Policy p (new)\n", "  What p checks.\n  Policy p (new)\n",
                                "  Policy p (new)\n\n"]                           # a why, else the description
    assert action.to_pylist() == ["  - Halt\n", "  - Pay  [€5.00]\n"]
    html = cards._pieces("card.html", {k: cards.escape(v) for k, v in item.items()}, opens, closes, texts, money)
    assert '<div class="t"><a href="https://x.test/P1?a&amp;b">Shop</a> <span' in html[0].to_pylist()[0]
    assert html[1].to_pylist()[0] == ('</ul>\n<div class="why"><b>Why:</b> Because &lt;late&gt;.</div>\n'
                                      '<div class="r">Policy <code>p</code> · new</div>\n')
