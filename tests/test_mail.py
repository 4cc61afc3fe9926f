"""Delivery of the reports over real SMTP (aiosmtpd on 127.0.0.1): once per manager, never twice, never lost."""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import logging
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from mailserver import Inbox, PasswordCheck, Server, free_port, make_certificates
from night import AS_OF
from report_nights import PAULA, PEDRO, QUENTIN, busy_night

from processor.cli.main import main
from processor.delivery import message, settings
from processor.delivery.address import mailbox, valid_address
from processor.ledger import Ledger
from processor.run import publish, run_night, write_outbox

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies.yaml"
SMTP_VARS = ("SHAKERS_SMTP_HOST", "SHAKERS_SMTP_PORT", "SHAKERS_SMTP_TLS", "SHAKERS_SMTP_USER", "SHAKERS_SMTP_PASSWORD",
             "SHAKERS_MAIL_FROM", "SHAKERS_SMTP_CAFILE", "SHAKERS_SMTP_TIMEOUT", "SHAKERS_SMTP_RETRIES",
             "SHAKERS_SMTP_BACKOFF", "SHAKERS_SMTP_CONFIG")


@pytest.fixture(autouse=True)
def no_ambient_smtp(monkeypatch):
    """Tests say exactly where mail goes; nothing from the machine's environment leaks in."""
    for name in SMTP_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SHAKERS_SMTP_BACKOFF", "0")


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


def smtp_env(monkeypatch, port: int, tls: str = "none", **more):
    monkeypatch.setenv("SHAKERS_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SHAKERS_SMTP_PORT", str(port))
    monkeypatch.setenv("SHAKERS_SMTP_TLS", tls)
    monkeypatch.setenv("SHAKERS_SMTP_TIMEOUT", "10")
    monkeypatch.setenv("SHAKERS_MAIL_FROM", "Policy reports <reports@shakers.test>")
    for k, v in more.items():
        monkeypatch.setenv(k, v)


def run(tmp_path, night=None, as_of=AS_OF, out="run", ledger="ledger.sqlite", **kw):
    export = (night or busy_night(as_of)).write(tmp_path / f"export-{as_of}")
    return run_night(export, policies_path=POLICIES, out_dir=tmp_path / out, ledger_path=tmp_path / ledger, workers=0,
                     **kw)


def body(message, kind: str) -> str:
    return message.get_body((kind,)).get_content()


# ---------------------------------------------------------------- one email per manager with work


def test_each_manager_with_work_gets_exactly_one_email_with_both_parts(tmp_path, monkeypatch, server):
    smtp_env(monkeypatch, server.port)
    result = run(tmp_path)
    assert result.exit_code == 0
    inbox = server.inbox
    assert sorted(r for m in inbox.messages for r in m.rcpt_tos) == [PAULA, PEDRO]
    assert inbox.to(QUENTIN) == []          # all well on Quentin's projects: no email
    for received in inbox.messages:
        assert received.mail_from == "reports@shakers.test"
        msg = received.message
        assert msg.get_content_type() == "multipart/mixed"       # the text and HTML parts, then the CSV
        alternative, attached = list(msg.iter_parts())
        assert alternative.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
        assert (attached.get_content_type(), attached.get_filename()) == ("text/csv", "actions-2026-11-24.csv")
        assert attached.get_content_disposition() == "attachment"
        assert len(msg["To"].addresses) == 1 and msg["To"].addresses[0].addr_spec == received.rcpt_tos[0]
        assert msg["Message-ID"].endswith("@shakers-rules.local>")
        assert "2026-11-24" in msg["Subject"]
    paula = inbox.to(PAULA)[0].message
    for part in ("plain", "html"):
        text = body(paula, part)
        assert "Shop redesign" in text and "Data pipeline" in text and "Mobile app" not in text
    pedro = inbox.to(PEDRO)[0].message
    for part in ("plain", "html"):
        text = body(pedro, part)
        assert "Mobile app" in text and "Toni Top" in text and "€3,400.00" in text and "Shop redesign" not in text
    assert pedro["Subject"].strip() == ("Shakers policy report, night of 2026-11-24: 6 to act on now "
                                        "(1 for the platform)")
    reports = result.summary["reports"]
    assert (reports["emails_written"], reports["sent"], reports["undelivered"]) == (2, 2, 0)
    assert json.loads((result.out_dir / "summary.json").read_text())["reports"]["sent"] == 2


def test_every_email_is_also_in_the_outbox_byte_for_byte(tmp_path, monkeypatch, server):
    smtp_env(monkeypatch, server.port)
    result = run(tmp_path)
    files = sorted((result.out_dir / "outbox").glob("*.eml"))
    assert len(files) == 2
    sent = {m.message["Message-ID"]: m.data.replace(b"\r\n", b"\n") for m in server.inbox.messages}
    for f in files:
        msg = email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
        assert sent[msg["Message-ID"]] == f.read_bytes().replace(b"\r\n", b"\n")
    # The parts are UTF-8 as they are (the reports say €): said so to the server, which takes 8BITMIME.
    assert all(not f.read_bytes().isascii() for f in files)
    assert all("BODY=8BITMIME" in m.mail_options for m in server.inbox.messages)


def test_a_server_without_8bitmime_gets_each_email_in_seven_bits_saying_the_same(tmp_path, monkeypatch):
    server = Server(decode_data=True)   # aiosmtpd then does not offer 8BITMIME
    try:
        smtp_env(monkeypatch, server.port)
        result = run(tmp_path)
        assert result.exit_code == 0 and len(server.inbox.messages) == 2
        for received in server.inbox.messages:
            assert received.data.isascii() and "BODY=8BITMIME" not in received.mail_options
            sent = received.message
            path = next(p for p in (result.out_dir / "outbox").glob("*.eml")
                        if email.message_from_bytes(p.read_bytes(),
                                                    policy=email.policy.default)["Message-ID"] == sent["Message-ID"])
            kept = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            leaves = [p for p in sent.walk() if not p.is_multipart()]
            assert [p["Content-Transfer-Encoding"] for p in leaves] == ["base64", "base64", "base64"]
            assert [(p.get_content_type(), p.get_content()) for p in leaves] == \
                [(p.get_content_type(), p.get_content()) for p in kept.walk() if not p.is_multipart()]
            assert [(k, str(v)) for k, v in sent.items() if k != "Content-Transfer-Encoding"] == \
                [(k, str(v)) for k, v in kept.items() if k != "Content-Transfer-Encoding"]
    finally:
        server.stop()


def test_a_rerun_of_the_night_emails_nobody_twice(tmp_path, monkeypatch, server):
    smtp_env(monkeypatch, server.port)
    first = run(tmp_path)
    second = run(tmp_path)
    third = run(tmp_path, out="elsewhere")   # same night, same ledger, another run directory
    assert len(server.inbox.messages) == 2
    for again in (second, third):
        assert again.exit_code == 0
        assert again.summary["reports"]["sent"] == 0 and again.summary["reports"]["already_sent"] == 2
    def ids(r):
        return sorted(email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["Message-ID"]
                      for p in (r.out_dir / "outbox").glob("*.eml"))

    assert ids(first) == ids(second) == ids(third)


def test_the_message_id_depends_on_the_night_and_the_recipient_only():
    a = message.message_id("2026-11-24", "paula@shakers.test", "PS1")
    assert a == message.message_id("2026-11-24", "Paula@Shakers.test", "PS1")
    assert a != message.message_id("2026-11-25", "paula@shakers.test", "PS1")
    assert a != message.message_id("2026-11-24", "pedro@shakers.test", "PS2")


# ---------------------------------------------------------------- never lost


def test_with_the_server_down_the_run_exits_5_keeps_every_email_and_send_delivers_each_once(tmp_path, monkeypatch,
                                                                                            caplog):
    port = free_port()                      # nothing listens here yet
    smtp_env(monkeypatch, port, SHAKERS_SMTP_RETRIES="2")
    with caplog.at_level(logging.WARNING):
        result = run(tmp_path)
    assert result.exit_code == 5
    assert (result.out_dir / "decisions.csv").exists()
    outbox = sorted((result.out_dir / "outbox").glob("*.eml"))
    assert len(outbox) == 2
    reports = result.summary["reports"]
    assert (reports["sent"], reports["owed"], reports["undelivered"]) == (0, 2, 2)
    assert "cannot reach 127.0.0.1" in reports["error"]
    assert "not delivered" in caplog.text and "shakers-rules send --run" in caplog.text
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        rows = [ledger.delivery(m) for m in (message.read_eml(p).message_id for p in outbox)]
    assert {r["status"] for r in rows} == {"failed"} and all(r["last_error"] for r in rows)

    server = Server(port=port)
    try:
        cli = CliRunner()
        first = cli.invoke(main, ["send", "--run", str(result.out_dir)])   # ledger: the one the run recorded
        assert first.exit_code == 0, first.output
        assert "2 sent now, 0 already delivered, 0 still owed" in first.stdout
        again = cli.invoke(main, ["send", "--run", str(result.out_dir)])
        assert again.exit_code == 0 and "0 sent now, 2 already delivered" in again.stdout
        rerun = run(tmp_path)
        assert rerun.exit_code == 0 and rerun.summary["reports"]["already_sent"] == 2
        assert sorted(r for m in server.inbox.messages for r in m.rcpt_tos) == [PAULA, PEDRO]
    finally:
        server.stop()


def test_what_a_night_could_not_send_is_sent_by_the_next_run(tmp_path, monkeypatch):
    port = free_port()
    smtp_env(monkeypatch, port, SHAKERS_SMTP_RETRIES="1")
    assert run(tmp_path, out="night1").exit_code == 5
    server = Server(port=port)
    try:
        nxt = run(tmp_path, night=busy_night(AS_OF + dt.timedelta(days=1)), as_of=AS_OF + dt.timedelta(days=1),
                  out="night2")
        assert nxt.exit_code == 0
        assert nxt.summary["reports"]["earlier_nights_sent"] == 2 and nxt.summary["reports"]["sent"] == 2
        nights = sorted(m.message["X-Shakers-Night"] for m in server.inbox.messages)
        assert nights == ["2026-11-24", "2026-11-24", "2026-11-25", "2026-11-25"]
        assert run(tmp_path, night=busy_night(AS_OF + dt.timedelta(days=1)), as_of=AS_OF + dt.timedelta(days=1),
                   out="night2").summary["reports"]["sent"] == 0
        assert len(server.inbox.messages) == 4
    finally:
        server.stop()


def test_a_temporary_refusal_is_retried_and_delivered_once(tmp_path, monkeypatch):
    server = Server(Inbox(refuse_next=["451 4.3.0 try again later"]))
    try:
        smtp_env(monkeypatch, server.port)
        result = run(tmp_path)
        assert result.exit_code == 0
        assert sorted(r for m in server.inbox.messages for r in m.rcpt_tos) == [PAULA, PEDRO]
    finally:
        server.stop()


def test_a_connection_dropped_during_an_email_is_retried_on_a_new_one_and_delivered_once(tmp_path, monkeypatch):
    server = Server(Inbox(drop_next=1))
    try:
        smtp_env(monkeypatch, server.port, SHAKERS_SMTP_RETRIES="2")
        result = run(tmp_path)
        assert result.exit_code == 0, result.summary["reports"]
        assert sorted(r for m in server.inbox.messages for r in m.rcpt_tos) == [PAULA, PEDRO]
    finally:
        server.stop()


def test_the_nightly_retry_counts_a_claim_too_young_to_take_over_as_still_owed(tmp_path, monkeypatch, server):
    from processor.nightly import deliver_night

    smtp_env(monkeypatch, server.port)
    email = [(MID, "2026-11-24", PAULA, str(tmp_path / "x.eml"), "Paula (PS1)")]
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.owe_deliveries(email)
        assert ledger.claim_delivery(MID, "2026-11-24", PAULA, str(tmp_path / "x.eml"))   # a sender killed a minute ago
    assert deliver_night(tmp_path / "2026-11-24", tmp_path / "ledger.sqlite") == 5   # not "now delivered"
    assert server.inbox.messages == []


def test_the_nightly_retry_sends_what_a_ledger_owes_to_that_ledger_and_leaves_the_environment_as_it_was(
        tmp_path, monkeypatch, server):
    """The nightly job's retry is a library call with its ledger: no SHAKERS_LEDGER set for a command to read."""
    from processor.nightly import deliver_night

    monkeypatch.delenv("SHAKERS_LEDGER", raising=False)
    smtp_env(monkeypatch, 1)   # nothing listens there: the night's emails stay owed
    night = run(tmp_path, ledger="elsewhere/ledger.sqlite")
    assert night.exit_code == 5 and night.summary["reports"]["owed"] == 2
    smtp_env(monkeypatch, server.port)
    before = dict(os.environ)
    assert deliver_night(tmp_path / "2026-11-24", tmp_path / "elsewhere" / "ledger.sqlite") == 0
    assert dict(os.environ) == before
    assert sorted(r for m in server.inbox.messages for r in m.rcpt_tos) == [PAULA, PEDRO]
    with Ledger(tmp_path / "elsewhere" / "ledger.sqlite") as ledger:
        assert ledger.deliveries_owed_count() == 0


def test_a_permanent_refusal_is_not_retried_and_stays_owed(tmp_path, monkeypatch):
    server = Server(Inbox(refuse_next=["550 5.1.1 mailbox unavailable"]))
    try:
        smtp_env(monkeypatch, server.port)
        result = run(tmp_path)
        assert result.exit_code == 5
        assert len(server.inbox.messages) == 1          # the other manager still got theirs
        assert result.summary["reports"]["owed"] == 1
        with Ledger(tmp_path / "ledger.sqlite") as ledger:
            failed = ledger.deliveries_owed()
        assert len(failed) == 1 and failed[0]["attempts"] == 1 and "550" in failed[0]["last_error"]
        assert CliRunner().invoke(main, ["send", "--run", str(result.out_dir)]).exit_code == 0
        assert len(server.inbox.messages) == 2
    finally:
        server.stop()


def test_without_a_host_the_outbox_is_written_and_nothing_is_sent(tmp_path, monkeypatch):
    result = run(tmp_path)
    assert result.exit_code == 0
    assert len(list((result.out_dir / "outbox").glob("*.eml"))) == 2
    assert result.summary["reports"]["smtp"].startswith("no SMTP host")
    out = CliRunner().invoke(main, ["send", "--run", str(result.out_dir)])
    assert out.exit_code == 5 and "SHAKERS_SMTP_HOST is not set" in out.stderr and "2 email(s)" in out.stderr


def test_send_explains_a_directory_without_an_outbox(tmp_path):
    out = CliRunner().invoke(main, ["send", "--run", str(tmp_path)])
    assert out.exit_code == 2 and "has no outbox/" in out.stderr and "Traceback" not in out.output


def test_a_wrong_tls_mode_is_a_sentence_not_a_traceback(tmp_path, monkeypatch):
    result = run(tmp_path)
    monkeypatch.setenv("SHAKERS_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SHAKERS_SMTP_TLS", "maybe")
    out = CliRunner().invoke(main, ["send", "--run", str(result.out_dir)])
    assert out.exit_code == 2 and "SHAKERS_SMTP_TLS must be one of none, starttls, ssl" in out.stderr
    assert run(tmp_path).exit_code == 5     # the run itself: decisions written, reports not delivered


def test_a_rerun_that_no_longer_reports_to_a_manager_withdraws_the_stale_email(tmp_path):
    first = run(tmp_path)
    assert len(list((first.out_dir / "outbox").glob("*.eml"))) == 2
    calm = busy_night()
    calm.rows["contact_attempts"] = [a for a in calm.rows["contact_attempts"] if a["project_id"] != "P2"]
    calm.rows["invoices"] = []
    second = run(tmp_path, night=calm)
    left = [message.read_eml(p) for p in (second.out_dir / "outbox").glob("*.eml")]
    assert [o.recipient for o in left] == [PAULA]


# ---------------------------------------------------------------- TLS and login


@pytest.fixture
def certificates(tmp_path):
    return make_certificates(tmp_path / "tls")


def test_starttls_and_login_against_a_server_that_requires_them(tmp_path, monkeypatch, certificates):
    inbox = Inbox()
    server = Server(inbox, tls_context=certificates.server_context(), require_starttls=True, auth_required=True,
                    auth_require_tls=True, authenticator=PasswordCheck(inbox, "reports", "s3cret-Pa55"))
    try:
        smtp_env(monkeypatch, server.port, "starttls", SHAKERS_SMTP_USER="reports", SHAKERS_SMTP_PASSWORD="s3cret-Pa55",
                 SHAKERS_SMTP_CAFILE=str(certificates.ca_pem))
        result = run(tmp_path)
        assert result.exit_code == 0, result.summary["reports"]
        assert sorted(r for m in inbox.messages for r in m.rcpt_tos) == [PAULA, PEDRO]
        assert inbox.tls_sessions == 2 and inbox.logins and all(login == "reports" for _m, login in inbox.logins)
        assert result.summary["reports"]["smtp"] == f"127.0.0.1:{server.port} (starttls, with login)"
    finally:
        server.stop()


def test_an_untrusted_certificate_is_refused_and_nothing_is_sent_in_clear(tmp_path, monkeypatch, certificates):
    inbox = Inbox()
    server = Server(inbox, tls_context=certificates.server_context(), require_starttls=True)
    try:
        smtp_env(monkeypatch, server.port, "starttls")      # no SHAKERS_SMTP_CAFILE: the test CA is not trusted
        result = run(tmp_path)
        assert result.exit_code == 5 and inbox.messages == []
        assert "certificate" in result.summary["reports"]["error"].lower()
        assert "set SHAKERS_SMTP_CAFILE" in result.summary["reports"]["error"]   # the fix, named
    finally:
        server.stop()


def test_implicit_tls_on_the_ssl_port(tmp_path, monkeypatch, certificates):
    inbox = Inbox()
    server = Server(inbox, ssl_context=certificates.server_context())
    try:
        smtp_env(monkeypatch, server.port, "ssl", SHAKERS_SMTP_CAFILE=str(certificates.ca_pem))
        result = run(tmp_path)
        assert result.exit_code == 0, result.summary["reports"]
        assert len(inbox.messages) == 2 and inbox.tls_sessions == 2
    finally:
        server.stop()


def test_a_wrong_password_never_shows_the_password_anywhere(tmp_path, monkeypatch, certificates, caplog):
    inbox = Inbox()
    password = "Hunter2-very-secret"
    server = Server(inbox, tls_context=certificates.server_context(), require_starttls=True, auth_required=True,
                    authenticator=PasswordCheck(inbox, "reports", "the-right-one"))
    try:
        smtp_env(monkeypatch, server.port, "starttls", SHAKERS_SMTP_USER="reports", SHAKERS_SMTP_PASSWORD=password,
                 SHAKERS_SMTP_CAFILE=str(certificates.ca_pem))
        with caplog.at_level(logging.DEBUG):
            result = run(tmp_path)
        assert result.exit_code == 5 and inbox.messages == []
        assert "refused the login" in result.summary["reports"]["error"]
        out = CliRunner().invoke(main, ["send", "--run", str(result.out_dir)])
        assert out.exit_code == 5
        import base64
        secrets = [password, base64.b64encode(password.encode()).decode()]
        with Ledger(tmp_path / "ledger.sqlite") as ledger:
            errors = " ".join(r["last_error"] for r in ledger.deliveries_owed())
        places = [out.output, caplog.text, errors, repr(settings.SmtpSettings.from_env())] + \
            [p.read_text(errors="replace") for p in result.out_dir.rglob("*") if p.is_file()]
        for place in places:
            for secret in secrets:
                assert secret not in place
    finally:
        server.stop()


# ---------------------------------------------------------------- hostile text from the export


def test_a_name_with_a_line_break_cannot_add_a_header(tmp_path, monkeypatch, server):
    smtp_env(monkeypatch, server.port)
    night = busy_night(paula_name="Evil\r\nBcc: attacker@evil.test", shop_title="Shop\r\nBcc: x@y.test "
                                                                                "<script>alert(1)</script>")
    result = run(tmp_path, night=night)
    assert result.exit_code == 0
    assert sorted(r for m in server.inbox.messages for r in m.rcpt_tos) == [PAULA, PEDRO]
    paula = server.inbox.to(PAULA)[0]
    msg = paula.message
    assert msg["Bcc"] is None and "attacker@evil.test" not in paula.rcpt_tos
    assert [a.addr_spec for a in msg["To"].addresses] == [PAULA]
    headers = paula.data.split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc:" not in headers and b"\rBcc:" not in headers
    assert all(not line.lower().startswith(b"bcc") for line in headers.splitlines())
    assert "<script>" not in body(msg, "html") and "&lt;script&gt;" in body(msg, "html")


def test_a_hostile_email_address_is_refused_at_the_export_and_gets_no_email(tmp_path, monkeypatch, server):
    smtp_env(monkeypatch, server.port)
    night = busy_night()
    night.rows["users"][0]["email"] = "paula@shakers.test\r\nBcc: attacker@evil.test"
    result = run(tmp_path, night=night, max_reject_share=1.0)  # Paula and her projects: a night this small allows it
    assert sorted(r for m in server.inbox.messages for r in m.rcpt_tos) == [PEDRO]
    assert "attacker@evil.test" not in " ".join(m.data.decode(errors="replace") for m in server.inbox.messages)
    assert "PS1" in set(result.rejects["record_id"])


def test_a_report_without_a_usable_address_is_not_built_is_told_to_a_person_and_is_never_owed(tmp_path, monkeypatch,
                                                                                              server, caplog):
    """Defence in depth: whatever the export lets through, an address that is not plain gets no email,
    and no later run pretends it will deliver it (it is not owed, so the night does not exit 5 for it)."""
    from processor.export.read import read_export
    from processor.reports.build import build_reports
    from processor.run import decide_night
    from rules.document import load_policies

    export = read_export(busy_night().write(tmp_path / "export"))
    decisions, _ev, facts = decide_night(load_policies(POLICIES), export, AS_OF, workers=0)
    reports = build_reports(decisions.assign(state="new"), facts.projects, facts.milestones, facts.users, AS_OF, "r1")
    reports[0].email = "paula@shakers.test\r\nBcc: attacker@evil.test"
    smtp_env(monkeypatch, server.port)
    with caplog.at_level(logging.WARNING), Ledger(tmp_path / "ledger.sqlite") as ledger:
        outcome = publish(tmp_path / "outbox", reports, ledger)
        assert ledger.deliveries_owed() == [] and len(ledger.db.execute("SELECT * FROM deliveries").fetchall()) == 1
    assert outcome.undelivered == 0 and [u["manager_id"] for u in outcome.summary["unaddressed"]] == ["PS1"]
    assert outcome.by_manager["PS1"]["status"] == "no address"
    assert "no report email for Paula Success (PS1)" in caplog.text and "users table" in caplog.text
    assert sorted(r for m in server.inbox.messages for r in m.rcpt_tos) == [PEDRO]
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1


def test_mailbox_strips_control_characters_from_names():
    box = mailbox("Evil\r\nBcc: x@y\u2028Z", "p@shakers.test")
    assert "\r" not in str(box) and "\n" not in str(box) and box.addr_spec == "p@shakers.test"
    with pytest.raises(ValueError):
        mailbox("x", "p@shakers.test\nBcc: x@y")


def test_the_settings_follow_spec_section_6(monkeypatch, tmp_path):
    assert settings.SmtpSettings.from_env({}).host is None
    assert settings.SmtpSettings.from_env({"SHAKERS_SMTP_HOST": "h"}).port == 587
    assert settings.SmtpSettings.from_env({"SHAKERS_SMTP_HOST": "h", "SHAKERS_SMTP_TLS": "ssl"}).port == 465
    assert settings.SmtpSettings.from_env({"SHAKERS_SMTP_HOST": "h", "SHAKERS_SMTP_TLS": "none"}).port == 25
    assert settings.SmtpSettings.from_env({}).mail_from == "policy-reports@localhost"
    only_user = settings.SmtpSettings.from_env({"SHAKERS_SMTP_USER": "u"})
    assert not only_user.login
    config = tmp_path / "smtp.env"
    config.write_text("# mail\nSHAKERS_SMTP_HOST=mail.example.com\nSHAKERS_SMTP_PASSWORD='p w'\n")
    from_file = settings.SmtpSettings.from_env({"SHAKERS_SMTP_CONFIG": str(config), "SHAKERS_SMTP_USER": "u"})
    assert (from_file.host, from_file.user, from_file.password, from_file.login) == ("mail.example.com", "u", "p w",
                                                                                     True)
    assert "p w" not in repr(from_file) and "p w" not in from_file.describe()
    with pytest.raises(settings.MailConfigError, match="SHAKERS_SMTP_PORT"):
        settings.SmtpSettings.from_env({"SHAKERS_SMTP_PORT": "smtp"})


# ---------------------------------------------------------------- delivery states (processor.ledger)

STATES = ["outbox", "pending", "sending", "delivered", "failed", "permanent", "withdrawn"]
MID = "<report.2026-11-24.000000000000000000000000@shakers-rules.local>"


def _put(ledger: Ledger, status: str | None):
    """A row in `status` (None: no row), written as the ledger's own methods would leave it."""
    if status is None:
        return
    ledger.db.execute("INSERT INTO deliveries (message_id, as_of, recipient, eml_path, status, updated_at, claimed_at) "
                      "VALUES (?, '2026-11-24', 'ps@shakers.test', 'x.eml', ?, '', ?)",
                      (MID, status, "2000-01-01T00:00:00+00:00" if status == "sending" else ""))   # an old claim: stale


def _make(ledger: Ledger, target: str, asked: bool = False):
    """Ask the ledger, through the call that leads there, to move the row to `target`."""
    email = [(MID, "2026-11-24", "ps@shakers.test", "x.eml", "Paula (PS1)")]
    {"outbox": lambda: ledger.owe_deliveries(email, outbox_only=True),
     "pending": lambda: ledger.owe_deliveries(email, asked=asked),
     "sending": lambda: ledger.claim_delivery(MID, "2026-11-24", "ps@shakers.test", "x.eml", stale_after=60),
     "delivered": lambda: ledger.delivery_sent(MID),
     "failed": lambda: ledger.delivery_failed(MID, "451 try later"),
     "permanent": lambda: ledger.delivery_refused(MID, "550 no such user", "2026-11-24", nights=1),
     "withdrawn": lambda: ledger.withdraw_delivery(MID)}[target]()


@pytest.mark.parametrize("old", [None, *STATES])
@pytest.mark.parametrize("new", STATES)
def test_a_delivery_moves_only_along_the_transitions_the_table_allows(tmp_path, old, new):
    from processor.ledger import DELIVERY_TRANSITIONS

    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        _put(ledger, old)
        _make(ledger, new, asked=True)
        got = (ledger.delivery(MID) or {}).get("status")
    allowed = new in DELIVERY_TRANSITIONS[old]
    assert got == (new if allowed else old), f"{old} -> {new} is {'allowed' if allowed else 'not allowed'}"


def test_a_delivered_email_is_final_and_an_outbox_only_one_is_never_sent_before_it_is_owed():
    from processor.ledger import DELIVERY_TRANSITIONS, OWED

    assert DELIVERY_TRANSITIONS["delivered"] == frozenset()
    assert "sending" not in DELIVERY_TRANSITIONS["outbox"] and "outbox" not in OWED and "permanent" not in OWED
    assert {old for old, new in DELIVERY_TRANSITIONS.items() if "permanent" in new} == {"sending"}   # only a refusal


def test_a_permanently_refused_email_is_owed_again_only_when_send_asks_for_it(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        _put(ledger, "permanent")
        _make(ledger, "pending")                       # a rerun of the night
        assert ledger.delivery(MID)["status"] == "permanent"
        _make(ledger, "pending", asked=True)           # send --run
        assert ledger.delivery(MID)["status"] == "pending" and ledger.delivery(MID)["nights_tried"] == 0


def test_a_claim_left_by_a_killed_sender_goes_stale_after_its_time_whatever_else_touches_the_row(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "ledger.sqlite"
    email = [(MID, "2026-11-24", "ps@shakers.test", "x.eml", "Paula (PS1)")]
    with Ledger(path) as ledger:
        ledger.owe_deliveries(email)
    sender = subprocess.run([sys.executable, "-c", f"""
import os, signal
from processor.ledger import Ledger
ledger = Ledger({str(path)!r})
assert ledger.claim_delivery({MID!r}, "2026-11-24", "ps@shakers.test", "x.eml")
os.kill(os.getpid(), signal.SIGKILL)   # killed while sending
"""], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert sender.returncode == -signal.SIGKILL, sender.stderr
    with Ledger(path) as ledger:
        assert ledger.delivery(MID)["status"] == "sending"
        assert ledger.deliveries_owed(stale_after=1) == []           # a fresh claim is another sender's
        assert not ledger.claim_delivery(MID, "2026-11-24", "ps@shakers.test", "x.eml", stale_after=1)
        time.sleep(2.1)
        ledger.owe_deliveries(email)                                 # a rerun writing the outbox again touches the row
        ledger.withdraw_delivery("<another>")
        assert [r["message_id"] for r in ledger.deliveries_owed(stale_after=1)] == [MID]
        assert ledger.claim_delivery(MID, "2026-11-24", "ps@shakers.test", "x.eml", stale_after=1)


def test_an_old_ledgers_sent_emails_are_delivered_and_its_never_tried_ones_outbox_only(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:   # the deliveries table as ledgers before the delivery states had it
        db.execute("CREATE TABLE deliveries (message_id TEXT PRIMARY KEY, as_of TEXT NOT NULL, recipient TEXT NOT "
                   "NULL, "
                   "eml_path TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
                   "last_error TEXT NOT NULL DEFAULT '', updated_at TEXT NOT NULL)")
        for mid, status in (("<a>", "sent"), ("<b>", "pending"), ("<c>", "failed"), ("<d>", "sending")):
            db.execute("INSERT INTO deliveries VALUES (?, '2026-11-24', 'ps@shakers.test', 'x.eml', ?, 1, '', "
                       "'2026-11-24T03:00:00+00:00')", (mid, status))
    with Ledger(path) as ledger:
        assert ledger.delivery_statuses(["<a>", "<b>", "<c>", "<d>"]) == {
            "<a>": "delivered", "<b>": "outbox", "<c>": "failed", "<d>": "sending"}
        assert ledger.delivery("<d>")["claimed_at"] == "2026-11-24T03:00:00+00:00"
        assert [r["message_id"] for r in ledger.deliveries_owed()] == ["<c>", "<d>"]
    with Ledger(path) as ledger:   # once: a second open changes nothing
        assert ledger.delivery("<b>")["status"] == "outbox"


# ---------------------------------------------------------------- owed email: picked up, bounded, told to a person

CLI = [str(Path(os.sys.executable).with_name("shakers-rules"))]


def cli(*args, env: dict | None = None, timeout: float = 300):
    import subprocess

    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def night(n: int) -> dt.date:
    return AS_OF + dt.timedelta(days=n)


def test_a_refused_address_is_retried_on_a_bounded_number_of_nights_then_given_up_and_told(tmp_path, monkeypatch,
                                                                                           caplog):
    server = Server(Inbox(refuse_rcpt={PAULA: "550 5.1.1 <paula@shakers.test>: mailbox unavailable"}))
    try:
        smtp_env(monkeypatch, server.port, SHAKERS_SMTP_PERMANENT_NIGHTS="2")
        first = run(tmp_path, night=busy_night(night(0)), as_of=night(0), out="n0")
        assert first.exit_code == 5 and first.summary["reports"]["owed"] == 1      # tried on 1 night of 2: owed
        with caplog.at_level(logging.WARNING):
            second = run(tmp_path, night=busy_night(night(1)), as_of=night(1), out="n1")
        assert second.exit_code == 0, second.summary["reports"]                     # given up: no longer exit 5
        given_up = second.summary["reports"]["permanently_refused"]
        assert len(given_up) == 2                                                  # last night's and tonight's
        assert all("Paula Success (PS1)" in why and "550 5.1.1" in why and "users table" in why for why in given_up)
        assert "Paula Success (PS1)" in caplog.text and "mailbox unavailable" in caplog.text
        third = run(tmp_path, night=busy_night(night(2)), as_of=night(2), out="n2")
        assert third.exit_code == 0 and len(third.summary["reports"]["permanently_refused"]) == 1   # still told
        assert [m.rcpt_tos for m in server.inbox.messages] == [[PEDRO]] * 3
        with Ledger(tmp_path / "ledger.sqlite") as ledger:
            assert ledger.deliveries_owed() == []
            statuses = ledger.db.execute("SELECT status, count(*) FROM deliveries WHERE recipient = ? GROUP BY status",
                                         (PAULA,)).fetchall()
        assert statuses == [("permanent", 3)]
    finally:
        server.stop()


def test_the_next_run_sends_an_earlier_nights_email_that_was_written_but_never_tried(tmp_path, monkeypatch, server):
    from report_nights import reports as some_reports

    smtp_env(monkeypatch, server.port)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:   # a night killed between its outbox and its first email
        written, _ = write_outbox(tmp_path / "killed" / "outbox", some_reports(2), "reports@shakers.test", ledger)
        assert set(ledger.delivery_statuses(o.message_id for o in written).values()) == {"pending"}
    nxt = run(tmp_path, night=busy_night(night(1)), as_of=night(1), out="n1")
    assert nxt.exit_code == 0 and nxt.summary["reports"]["earlier_nights_sent"] == 2
    assert sorted(r for m in server.inbox.messages for r in m.rcpt_tos) == [PAULA, PEDRO, "ps0@shakers.test",
                                                                            "ps1@shakers.test"]


def test_nights_written_without_a_host_are_not_sent_later_but_send_run_still_sends_them(tmp_path, monkeypatch, server):
    old = [run(tmp_path, night=busy_night(night(i)), as_of=night(i), out=f"n{i}") for i in (0, 1)]   # no SMTP host
    assert all(r.exit_code == 0 and r.summary["reports"]["smtp"].startswith("no SMTP host") for r in old)
    smtp_env(monkeypatch, server.port)
    tonight = run(tmp_path, night=busy_night(night(2)), as_of=night(2), out="n2")
    assert tonight.exit_code == 0 and tonight.summary["reports"]["earlier_nights_sent"] == 0
    assert sorted(m.message["X-Shakers-Night"] for m in server.inbox.messages) == [night(2).isoformat()] * 2
    asked = cli("send", "--run", old[0].out_dir, env={k: v for k, v in os.environ.items() if k.startswith("SHAKERS_")})
    assert asked.returncode == 0, asked.stderr
    assert "2 sent now, 0 already delivered, 0 still owed" in asked.stdout
    assert sorted(m.message["X-Shakers-Night"]
                  for m in server.inbox.messages) == [night(0).isoformat()] * 2 + [night(2).isoformat()] * 2


def test_send_uses_the_ledger_the_run_recorded_before_its_first_email_never_a_default_one(tmp_path, monkeypatch):
    seen = []
    inbox = Inbox()
    server = Server(inbox)
    try:
        out = tmp_path / "run"
        inbox.on_data = lambda: seen.append(json.loads((out / "ledger.json").read_text()))
        smtp_env(monkeypatch, server.port)
        result = run(tmp_path, ledger="nights/ledger.sqlite")
        assert result.exit_code == 0 and len(inbox.messages) == 2
        assert seen == [{"ledger": str((tmp_path / "nights" / "ledger.sqlite").resolve())}] * 2
        decoy = tmp_path / "decoy.sqlite"
        env = {**{k: v for k, v in os.environ.items() if k.startswith("SHAKERS_")}, "SHAKERS_LEDGER": str(decoy)}
        again = cli("send", "--run", out, env=env)
        assert again.returncode == 0 and "0 sent now, 2 already delivered" in again.stdout, again.stderr
        assert not decoy.exists() and len(inbox.messages) == 2
        (out / "ledger.json").unlink()
        (out / "summary.json").unlink()
        refused = cli("send", "--run", out, env=env)
        assert refused.returncode == 2 and "--ledger" in refused.stderr and "Traceback" not in refused.stderr
        assert not decoy.exists() and len(inbox.messages) == 2
    finally:
        server.stop()


# ---------------------------------------------------------------- settings found before the night


@pytest.mark.parametrize("setting, says", [
    ({"SHAKERS_SMTP_TLS": "maybe"}, "SHAKERS_SMTP_TLS must be one of none, starttls, ssl"),
    ({"SHAKERS_SMTP_CONFIG": "/nonexistent/smtp.env"}, "SHAKERS_SMTP_CONFIG names /nonexistent/smtp.env, which cannot "
                                                       "be read"),
    ({"SHAKERS_SMTP_TLS": "none", "SHAKERS_SMTP_USER": "reports", "SHAKERS_SMTP_PASSWORD": "pw"},
     "SHAKERS_SMTP_ALLOW_PLAINTEXT_LOGIN=1"),
])
@pytest.mark.parametrize("command", ["run", "nightly"])
def test_a_wrong_smtp_setting_stops_run_and_nightly_with_exit_2_before_anything_is_evaluated(tmp_path, setting, says,
                                                                                             command):
    exports = tmp_path / "exports"
    busy_night().write(exports / AS_OF.isoformat())
    env = {"SHAKERS_SMTP_HOST": "127.0.0.1", **setting}
    if command == "run":
        done = cli("run", "--export", exports / AS_OF.isoformat(), "--out", tmp_path / "runs" / "x", "--ledger",
                   tmp_path / "ledger.sqlite", "--policies", POLICIES, "--workers", "0", env=env)
    else:
        done = cli("nightly", "--exports-root", exports, "--runs-root", tmp_path / "runs", "--ledger",
                   tmp_path / "ledger.sqlite",
                   "--policies", POLICIES, "--workers", "0", env=env)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Nothing was evaluated" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ledger.sqlite").exists()


def test_a_login_in_clear_text_is_allowed_only_when_said_so():
    login = {"SHAKERS_SMTP_HOST": "h", "SHAKERS_SMTP_TLS": "none", "SHAKERS_SMTP_USER": "u",
             "SHAKERS_SMTP_PASSWORD": "p"}
    with pytest.raises(settings.MailConfigError, match="in clear text"):
        settings.SmtpSettings.from_env(login)
    assert settings.SmtpSettings.from_env({**login, "SHAKERS_SMTP_ALLOW_PLAINTEXT_LOGIN": "1"}).login
    with pytest.raises(settings.MailConfigError, match="SHAKERS_SMTP_DEADLINE"):
        settings.SmtpSettings.from_env({"SHAKERS_SMTP_DEADLINE": "soon"})
    defaults = settings.SmtpSettings.from_env({})
    assert defaults.deadline == 600 and defaults.permanent_nights == 3   # SPEC §6


def test_a_stalling_server_cannot_hold_the_delivery_past_its_deadline_and_what_is_left_stays_owed(tmp_path,
                                                                                                   monkeypatch):
    server = Server(Inbox(stall_seconds=8))
    try:
        smtp_env(monkeypatch, server.port, SHAKERS_SMTP_DEADLINE="1.5", SHAKERS_SMTP_TIMEOUT="30")
        result = run(tmp_path)
        assert result.exit_code == 5 and result.timings["reports"] < 6, result.timings
        assert "SHAKERS_SMTP_DEADLINE" in result.summary["reports"]["error"]
        assert result.summary["reports"]["owed"] == 2
        with Ledger(tmp_path / "ledger.sqlite") as ledger:
            assert len(ledger.deliveries_owed()) == 2
    finally:
        server.stop()


# ---------------------------------------------------------------- every address the contract accepts


def test_an_internationalised_address_goes_with_smtputf8_and_its_domain_in_idna(tmp_path, monkeypatch):
    server = Server(enable_SMTPUTF8=True)
    try:
        smtp_env(monkeypatch, server.port)
        n = busy_night()
        n.rows["users"][0]["email"] = "páula@bücher.test"
        result = run(tmp_path, night=n)
        assert result.exit_code == 0, result.summary["reports"]
        paula = next(m for m in server.inbox.messages if m.rcpt_tos != [PEDRO])
        assert paula.rcpt_tos == ["páula@xn--bcher-kva.test"] and "SMTPUTF8" in paula.mail_options
        # RFC 6532: UTF-8
        to = email.message_from_string(paula.data.decode("utf-8"), policy=email.policy.default)["To"]
        assert to.addresses[0].addr_spec == "páula@xn--bcher-kva.test"
        assert to.addresses[0].display_name == "Paula Success"
        pedro = server.inbox.to(PEDRO)[0]
        assert "SMTPUTF8" not in pedro.mail_options            # an ASCII email goes as before
        kept = sorted(message.read_eml(p).recipient for p in (result.out_dir / "outbox").glob("*.eml"))
        assert kept == sorted(["páula@xn--bcher-kva.test", PEDRO])   # `send --run` reads the outbox's UTF-8 To line
    finally:
        server.stop()


@pytest.fixture
def server_without_smtputf8():
    s = Server(enable_SMTPUTF8=False)
    yield s
    s.stop()


def test_a_non_ascii_domain_needs_no_smtputf8_but_a_non_ascii_local_part_does_and_says_so(tmp_path, monkeypatch,
                                                                                         server_without_smtputf8):
    server = server_without_smtputf8
    smtp_env(monkeypatch, server.port)
    n = busy_night()
    n.rows["users"][0]["email"] = "paula@bücher.test"
    assert run(tmp_path, night=n, out="idna").exit_code == 0
    assert sorted(r for m in server.inbox.messages for r in m.rcpt_tos) == ["paula@xn--bcher-kva.test", PEDRO]
    n.rows["users"][0]["email"] = "páula@shakers.test"
    result = run(tmp_path, night=n, out="utf8", ledger="other.sqlite")
    assert result.exit_code == 5
    with Ledger(tmp_path / "other.sqlite") as ledger:
        (owed,) = ledger.deliveries_owed()
    assert "SMTPUTF8" in owed["last_error"] and "páula@shakers.test" in owed["last_error"]
    assert "Paula Success (PS1)" in owed["last_error"]
    assert len(server.inbox.to(PEDRO)) == 2


@pytest.mark.parametrize("address", ["paula@shakers.test,evil@evil.test", 'pa"ula@shakers.test',
                                     "paula..s@shakers.test",
                                     "<paula>@shakers.test", "paula@shakers.test."])
def test_an_address_mail_cannot_carry_is_rejected_when_the_export_is_read_with_the_reason(tmp_path, address):
    from processor.export.read import read_export

    n = busy_night()
    n.rows["users"][0]["email"] = address
    export = read_export(n.write(tmp_path / "export"), max_reject_share=1.0)  # a tiny night: one bad row
    (reject,) = export.rejects[export.rejects["record_id"] == "PS1"].to_dict("records")
    assert reject["column"] == "email" and "is not an email address mail can be sent to" in reject["reason"]
    assert not valid_address(address)


# ---------------------------------------------------------------- the nightly job's deliveries


def nightly(tmp_path: Path, env: dict):
    return cli("nightly", "--exports-root", tmp_path / "exports", "--runs-root", tmp_path / "runs", "--ledger",
               tmp_path / "ledger.sqlite", "--policies", POLICIES, "--workers", "0", "-q", env=env)


def mail_env(port: int, **more) -> dict:
    return {"SHAKERS_SMTP_HOST": "127.0.0.1", "SHAKERS_SMTP_PORT": str(port), "SHAKERS_SMTP_TLS": "none",
            "SHAKERS_SMTP_RETRIES": "1", "SHAKERS_SMTP_BACKOFF": "0", "SHAKERS_SMTP_TIMEOUT": "5", **more}


def test_the_nightly_job_delivers_what_earlier_nights_owe_with_its_own_ledger(tmp_path):
    busy_night(night(0)).write(tmp_path / "exports" / night(0).isoformat())
    decoy = tmp_path / "decoy.sqlite"   # where the job must never look: its ledger is --ledger
    port = free_port()
    down = nightly(tmp_path, mail_env(port, SHAKERS_LEDGER=str(decoy)))
    assert down.returncode == 5, down.stderr
    server = Server(port=port)
    try:
        back = nightly(tmp_path, mail_env(port, SHAKERS_LEDGER=str(decoy)))
        assert back.returncode == 0, back.stderr
        assert "reports owed from an earlier run are now delivered" in back.stdout
        assert sorted(r for m in server.inbox.messages for r in m.rcpt_tos) == [PAULA, PEDRO]
        again = nightly(tmp_path, mail_env(port, SHAKERS_LEDGER=str(decoy)))
        assert again.returncode == 0 and "nothing to do" in again.stdout and len(server.inbox.messages) == 2
        assert not decoy.exists()
    finally:
        server.stop()


def test_turning_smtp_on_sends_tonights_reports_not_the_outbox_only_nights_before(tmp_path, server):
    for i in (0, 1):
        busy_night(night(i)).write(tmp_path / "exports" / night(i).isoformat())
    assert nightly(tmp_path, {}).returncode == 0            # no SMTP host: outbox only
    busy_night(night(2)).write(tmp_path / "exports" / night(2).isoformat())
    on = nightly(tmp_path, mail_env(server.port))
    assert on.returncode == 0, on.stderr
    assert sorted(m.message["X-Shakers-Night"] for m in server.inbox.messages) == [night(2).isoformat()] * 2
    assert "nothing to do" in nightly(tmp_path, mail_env(server.port)).stdout
    assert len(server.inbox.messages) == 2


def test_a_smtp_host_from_the_config_file_counts_for_the_nightly_retry(tmp_path, monkeypatch):
    from processor.nightly import _sends_mail

    config = tmp_path / "smtp.env"
    config.write_text("SHAKERS_SMTP_HOST=mail.example.com\n")
    assert not _sends_mail()
    monkeypatch.setenv("SHAKERS_SMTP_CONFIG", str(config))
    assert _sends_mail()


def test_a_report_given_up_is_printed_by_the_cli_with_the_servers_reason_and_the_managers_name(tmp_path):
    server = Server(Inbox(refuse_rcpt={PAULA: "550 5.1.1 <paula@shakers.test>: no such user here"}))
    try:
        export = busy_night().write(tmp_path / "export")
        done = cli("run", "--export", export, "--out", tmp_path / "run", "--ledger", tmp_path / "ledger.sqlite",
                   "--policies", POLICIES, "--workers", "0", "-q", env=mail_env(server.port,
                                                                                SHAKERS_SMTP_PERMANENT_NIGHTS="1"))
        assert done.returncode == 0, done.stderr               # given up: told, not retried, not exit 5
        line = next(line for line in done.stderr.splitlines() if "given up" in line)
        assert "Paula Success (PS1)" in line and "550 5.1.1" in line and "no such user here" in line
        assert [m.rcpt_tos for m in server.inbox.messages] == [[PEDRO]]
    finally:
        server.stop()
