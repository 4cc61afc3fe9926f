"""The outbox's emails as bytes: parts that decode back to the exact text (as they are, else base64),
a boundary that no content can break, and the same outbox whether one process or several wrote it."""
from __future__ import annotations

import base64
import email
import email.errors
import email.policy
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from report_nights import Report, reports

from processor import arrow
from processor.delivery import address, message, outbox
from processor.ledger import Ledger
from processor.run import owe_written, write_outbox
from processor.workers import Dealt


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def parts(msg) -> dict[str, str]:
    return {p.get_content_type(): p.get_content() for p in msg.iter_parts()}


def canonical(text: str) -> str:
    """What a text part decodes to: CRLF line breaks, ending with one (as the `email` package made it)."""
    return text.replace("\n", "\r\n") + ("" if text.endswith("\n") else "\r\n")


@pytest.mark.parametrize("text", [
    "", "a", "one line\n", "ünïcödé €1,200.50 — Ainhoa Núñez 日本\n\n", "x" * 57, "x" * 58 + "\n", "y\n" * 1000,
    "no final newline\nsecond", "=3D ==\n.\nFrom here\n",
])
def test_a_base64_part_decodes_back_to_its_text_in_lines_of_76(text):
    encoded = message.base64_body(text)
    lines = encoded.split(b"\r\n")
    assert lines[-1] == b"" and all(0 < len(line) <= 76 for line in lines[:-1])
    assert all(len(line) == 76 for line in lines[:-2])
    assert base64.b64decode(encoded).decode("utf-8") == canonical(text)
    assert message.base64_body(text.encode("utf-8")) == encoded   # the same text, already encoded


def test_an_email_decodes_to_its_headers_text_and_html():
    report = Report("PS1", "Ainhoa Núñez", "ainhoa@shakers.test", "Shakers policy report, night of 2026-11-24: 2 new "
                                                                  "actions",
                    "Hello Ainhoa Núñez\n€5.00\n", "<p>Hello Ainhoa N&uacute;&ntilde;ez — €5.00</p>\n")
    mid, data = message.build_message(report, report.text, report.html, "Policy reports <reports@shakers.test>")
    msg = parse(data)
    assert msg["Message-ID"] == mid == message.message_id(report.as_of, report.email, "PS1")
    assert msg["Subject"] == report.subject and msg["X-Shakers-Night"] == "2026-11-24"
    assert msg["To"].addresses[0].display_name == "Ainhoa Núñez" and msg["To"].addresses[0].addr_spec == report.email
    assert str(msg["From"]) == "Policy reports <reports@shakers.test>"
    assert msg.get_content_type() == "multipart/alternative" and msg.defects == []
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert parts(msg) == {"text/plain": canonical(report.text), "text/html": canonical(report.html)}
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii() and max(len(line) for line in head.split(b"\r\n")) <= 78
    assert [p["Content-Transfer-Encoding"] for p in msg.iter_parts()] == ["8bit", "8bit"]
    assert max(len(line) for line in data.split(b"\r\n")) <= message.SMTP_LINE - 2


@pytest.mark.parametrize("body, encoding", [
    ("plain ASCII\n", "7bit"),
    ("ünïcödé €1,200.50\n", "8bit"),
    ("x" * 998 + "\n", "7bit"),                     # the longest line SMTP carries
    ("x" * 999 + "\n", "base64"),                   # one byte more
    ("é" * 499 + "\n", "8bit"),                     # 998 bytes of UTF-8: a line is counted in bytes
    ("é" * 500 + "\n", "base64"),
    ("a NUL \x00 in the text\n", "base64"),
])
def test_a_part_goes_as_it_is_unless_a_line_is_too_long_for_smtp_or_it_holds_a_nul(body, encoding):
    report = Report("PS1", "Paula", "ps@shakers.test", "s", body, "<p>h</p>\n")
    _mid, data = message.build_message(report, report.text, report.html, "reports@shakers.test")
    msg = parse(data)
    plain_part = next(msg.iter_parts())
    assert plain_part["Content-Transfer-Encoding"] == encoding and msg.defects == []
    assert plain_part.get_content() == canonical(body)


def test_a_body_that_quotes_the_boundary_stays_inside_its_part():
    mid = message.message_id("2026-11-24", "ps@shakers.test", "PS1")
    fence = f"--{message.boundary(mid)}"
    text = f"{fence}\nContent-Type: text/html\n\n<b>injected</b>\n{fence}--\n"
    report = Report("PS1", "Paula", "ps@shakers.test", "s", text, f"<pre>{fence}</pre>\n")
    _mid, data = message.build_message(report, report.text, report.html, "reports@shakers.test")
    msg = parse(data)
    assert len(list(msg.iter_parts())) == 2 and msg.defects == []
    assert parts(msg) == {"text/plain": canonical(text), "text/html": canonical(report.html)}
    assert [p["Content-Transfer-Encoding"] for p in msg.iter_parts()] == ["base64", "base64"]


def test_a_name_with_line_breaks_cannot_add_a_header():
    report = Report("PS1", "Evil\r\nBcc: attacker@evil.test", "ps@shakers.test", "night\r\nBcc: x@evil.test", "t\n",
                    "h\n")
    _mid, data = message.build_message(report, report.text, report.html, "reports@shakers.test")
    msg = parse(data)
    assert msg["Bcc"] is None and [a.addr_spec for a in msg["To"].addresses] == ["ps@shakers.test"]
    assert not any(line.lower().startswith(b"bcc") for line in data.split(b"\r\n\r\n", 1)[0].splitlines())


def outbox_of(directory: Path) -> dict[str, tuple]:
    got = {}
    for path in sorted(directory.glob("*")):
        msg = parse(path.read_bytes())
        got[path.name] = ([(k, str(v)) for k, v in msg.items() if k != "Date"], parts(msg))
    return got


def test_forked_writers_write_the_same_outbox_as_one_process_and_the_ledger_owes_each_email(tmp_path):
    with Ledger(tmp_path / "one.sqlite") as one, Ledger(tmp_path / "three.sqlite") as three:
        alone, _ = write_outbox(tmp_path / "alone", reports(7), "reports@shakers.test", one, workers=1)
        forked, _ = write_outbox(tmp_path / "forked", reports(7), "reports@shakers.test", three, workers=3)
        assert [(o.message_id, Path(o.eml_path).name, o.manager_id) for o in alone] == \
               [(o.message_id, Path(o.eml_path).name, o.manager_id) for o in forked]
        assert outbox_of(tmp_path / "alone") == outbox_of(tmp_path / "forked")   # no temporary file left either
        assert len(outbox_of(tmp_path / "forked")) == 7
        assert set(three.delivery_statuses(o.message_id for o in forked).values()) == {"pending"}
        assert all(three.delivery(o.message_id)["eml_path"] == o.eml_path for o in forked)


# in the forked writer, in this process
@pytest.mark.parametrize("failing, error", [("PS1", RuntimeError), ("PS2", ValueError)])
def test_a_writer_that_fails_fails_the_outbox_and_the_ledger_owes_nothing(tmp_path, monkeypatch, failing, error):
    def broken(report, text, html, mail_from, date=None):
        if report.manager_id == failing:
            raise ValueError(f"cannot render {failing}")
        return real(report, text, html, mail_from, date)

    real = outbox._message_pieces   # what the writers call for each email
    monkeypatch.setattr(outbox, "_message_pieces", broken)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        with pytest.raises(error, match=f"cannot render {failing}"):
            write_outbox(tmp_path / "outbox", reports(4), "reports@shakers.test", ledger, workers=2)
        assert ledger.delivery_statuses(message.message_id("2026-11-24", r.email, r.manager_id)
                                        for r in reports(4)) == {}
    assert list((tmp_path / "outbox").iterdir()) == []


def test_a_forked_writer_does_not_outlive_a_killed_run(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "writer.pid"
    script = f"""
import os, time
from processor.workers import Dealt

def work(share):
    if share == [1]:  # the forked writer's share
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
    time.sleep(60)
    return share

Dealt(work, [0, 1], 2).start(idle=True).wait()
"""
    run = subprocess.Popen([sys.executable, "-c", script], env={**os.environ,
                                                                "PYTHONPATH": str(Path(__file__).parents[1])})
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    writer = int(pid_file.read_text())
    os.kill(run.pid, signal.SIGKILL)
    run.wait()

    def alive() -> bool:
        try:
            return Path(f"/proc/{writer}/stat").read_text().split(") ")[1][0] != "Z"
        except (OSError, IndexError):
            return False

    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive()


@pytest.mark.parametrize("workers", [1, 3])
def test_the_nights_own_work_runs_while_the_writers_work_and_before_any_email_is_owed(tmp_path, workers):
    seen = {}
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        def meanwhile():
            import os
            seen["pid"] = os.getpid()
            seen["owed then"] = ledger.delivery_statuses(message.message_id("2026-11-24", r.email, r.manager_id)
                                                         for r in reports(5))
        writers = outbox.OutboxWriters(tmp_path / "outbox", reports(5), "reports@shakers.test", workers=workers).start()
        meanwhile()
        outcome = writers.wait()
        owe_written(ledger, outcome)
        written = outcome.outgoing
        import os
        assert seen == {"pid": os.getpid(), "owed then": {}}   # in this process, before the ledger owed anything
        assert set(ledger.delivery_statuses(o.message_id for o in written).values()) == {"pending"}
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 5


def _times_ten(share):
    return [x * 10 for x in share]


def test_work_dealt_to_forked_processes_while_the_parent_is_busy_comes_back_in_order():
    calls = []
    writers = Dealt(_times_ten, list(range(7)), 3).start()
    calls.append(1)   # the parent's own work while the children work
    got = writers.wait()
    assert got == [x * 10 for x in range(7)] and calls == [1]


# ---- headers written without the `email` package when it would write them as they are
_word = st.text(st.sampled_from("abcXYZ019,:;()!?-=/.'\"@<>[]#"), min_size=1, max_size=75)
_texts = st.one_of(st.lists(_word, max_size=30).map(" ".join),
                   st.text(st.sampled_from("abcXYZ019 ,:;()!?-=/.'\"@<>[]#é\t"), max_size=160))


@settings(max_examples=1000, deadline=None)
@given(_texts)
@example("Shakers policy report, night of 2026-11-24: 25 new actions (9 flagged)")   # whole, to the next line
@example("a " * 34 + "b" * 8)
@example("x" * 69 + " " + "y" * 8)
def test_a_subject_is_folded_as_the_email_package_folds_it(text):
    text = arrow.one_line(text)
    assert message._subject(text) == message._folded("Subject", text)


@settings(max_examples=400, deadline=None)
@given(st.text(st.sampled_from("abZ09 .\"é\r\n"), max_size=90), st.from_regex(r"[a-z0-9._+-]{1,30}@[a-z0-9.-]{1,50}",
                                                                              fullmatch=True))
def test_a_to_line_is_the_one_the_email_package_writes(name, addr):
    try:
        expected = message._folded("To", address.mailbox(name, addr))
    except (ValueError, email.errors.HeaderParseError) as e:   # not an address: the same refusal
        with pytest.raises(type(e)):
            message._to(name, addr)
        return
    assert message._to(name, addr) == expected


_name_word = st.text(st.sampled_from("aZéÑüÁöëßλ中'-"), min_size=1, max_size=12)
_names = st.one_of(st.lists(_name_word, min_size=1, max_size=6).map(" ".join),
                   st.text(st.sampled_from("aZé Ñ'-.\""), max_size=40))


@settings(max_examples=1500, deadline=None)
@given(_names, st.from_regex(r"[a-z0-9._+-]{1,30}@[a-z0-9.-]{1,40}", fullmatch=True))
@example("José de María", "jose@shakers.test")   # one encoded word over an ASCII word between
@example("Ñoño", "n@shakers.test")                # b: q would be 6 characters longer
@example("Jürgen Müller Österreich Straße", "someone.long@example.com")   # too long: the package folds it
def test_a_to_line_with_a_name_in_any_alphabet_is_the_one_the_email_package_writes(name, addr):
    try:
        expected = message._folded("To", address.mailbox(name, addr))
    except (ValueError, email.errors.HeaderParseError) as e:
        with pytest.raises(type(e)):
            message._to(name, addr)
        return
    assert message._to(name, addr) == expected


def test_the_subjects_and_names_of_a_night_take_the_short_way(monkeypatch):
    def not_called(*_args):
        raise AssertionError("folded by the email package")

    monkeypatch.setattr(message, "_folded", not_called)
    monkeypatch.setattr(message, "_shared", not_called)
    subject = ("Shakers policy report, night of 2026-11-24: 123 new actions (45 ongoing, 6 at risk, 7 flagged, "
               "8 resolved)")
    assert message._subject(subject) == (b"Subject: Shakers policy report, night of 2026-11-24: 123 new actions (45\r\n"
                                      b" ongoing, 6 at risk, 7 flagged, 8 resolved)\r\n")
    assert message._to("Paula Success", "paula@shakers.test") == b"To: Paula Success <paula@shakers.test>\r\n"
    assert message._to("Raúl Álvarez",
                       "raul@shakers.test") == b"To: =?utf-8?q?Ra=C3=BAl_=C3=81lvarez?= <raul@shakers.test>\r\n"
    assert message._to("Laura Pérez",
                       "laura@shakers.test") == b"To: Laura =?utf-8?q?P=C3=A9rez?= <laura@shakers.test>\r\n"


def test_the_delivery_package_works_without_the_ledger_the_reports_or_the_run():
    """delivery sits below run: it takes plain values and returns plain results, so it imports none of them."""
    import os
    import subprocess
    import sys

    script = ("import sys; import processor.delivery.outbox, processor.delivery.smtp, processor.delivery.settings; "
              "print(sorted(m for m in sys.modules if m in ('processor.ledger', 'processor.run', "
              "'processor.reports.build', "
              "'processor.nightly', 'processor.cli')))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.stdout.strip() == "[]"
