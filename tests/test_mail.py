"""Delivery of the reports over real SMTP (aiosmtpd on 127.0.0.1): once per manager, never twice, never lost."""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailserver import Inbox, PasswordCheck, Server, free_port, make_certificates
from night import AS_OF
from report_nights import PAULA, PEDRO, QUENTIN, busy_night

from processor import mail
from processor.cli import main
from processor.ledger import Ledger
from processor.run import run_night

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
    return run_night(export, policies_path=POLICIES, out_dir=tmp_path / out, ledger_path=tmp_path / ledger, workers=0, **kw)


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
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
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
    assert pedro["Subject"] == "Shakers policy report, night of 2026-11-24: 7 new actions"
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
                        if email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["Message-ID"] == sent["Message-ID"])
            kept = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert [p["Content-Transfer-Encoding"] for p in sent.iter_parts()] == ["base64", "base64"]
            assert [(p.get_content_type(), p.get_content()) for p in sent.iter_parts()] == \
                [(p.get_content_type(), p.get_content()) for p in kept.iter_parts()]
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
    ids = lambda r: sorted(email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["Message-ID"]
                           for p in (r.out_dir / "outbox").glob("*.eml"))
    assert ids(first) == ids(second) == ids(third)


def test_the_message_id_depends_on_the_night_and_the_recipient_only():
    a = mail.message_id("2026-11-24", "paula@shakers.test", "PS1")
    assert a == mail.message_id("2026-11-24", "Paula@Shakers.test", "PS1")
    assert a != mail.message_id("2026-11-25", "paula@shakers.test", "PS1")
    assert a != mail.message_id("2026-11-24", "pedro@shakers.test", "PS2")


# ---------------------------------------------------------------- never lost


def test_with_the_server_down_the_run_exits_5_keeps_every_email_and_send_delivers_each_once(tmp_path, monkeypatch, caplog):
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
        rows = [ledger.delivery(m) for m in (mail.read_eml(p).message_id for p in outbox)]
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
        nxt = run(tmp_path, night=busy_night(AS_OF + dt.timedelta(days=1)), as_of=AS_OF + dt.timedelta(days=1), out="night2")
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
    left = [mail.read_eml(p) for p in (second.out_dir / "outbox").glob("*.eml")]
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
        places = [out.output, caplog.text, errors, repr(mail.SmtpSettings.from_env())] + \
            [p.read_text(errors="replace") for p in result.out_dir.rglob("*") if p.is_file()]
        for place in places:
            for secret in secrets:
                assert secret not in place
    finally:
        server.stop()


# ---------------------------------------------------------------- hostile text from the export


def test_a_name_with_a_line_break_cannot_add_a_header(tmp_path, monkeypatch, server):
    smtp_env(monkeypatch, server.port)
    night = busy_night(paula_name="Evil\r\nBcc: attacker@evil.test", shop_title="Shop\r\nBcc: x@y.test <script>alert(1)</script>")
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


def test_a_report_without_a_usable_address_is_not_built_and_counts_as_undelivered(tmp_path, monkeypatch, server):
    """Defence in depth: whatever the export lets through, an address that is not plain gets no email."""
    from processor.reports import build_reports
    from processor.export import read_export
    from processor.run import decide_night
    from rules.document import load_policies

    export = read_export(busy_night().write(tmp_path / "export"))
    decisions, _ev, facts = decide_night(load_policies(POLICIES), export, AS_OF, workers=0)
    reports = build_reports(decisions.assign(state="new"), facts.projects, facts.milestones, facts.users, AS_OF, "r1")
    reports[0].email = "paula@shakers.test\r\nBcc: attacker@evil.test"
    smtp_env(monkeypatch, server.port)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        outcome = mail.publish(tmp_path / "outbox", reports, ledger)
    assert outcome.undelivered == 1 and [u["manager_id"] for u in outcome.summary["unaddressed"]] == ["PS1"]
    assert sorted(r for m in server.inbox.messages for r in m.rcpt_tos) == [PEDRO]
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1


def test_mailbox_strips_control_characters_from_names():
    box = mail.mailbox("Evil\r\nBcc: x@y\u2028Z", "p@shakers.test")
    assert "\r" not in str(box) and "\n" not in str(box) and box.addr_spec == "p@shakers.test"
    with pytest.raises(ValueError):
        mail.mailbox("x", "p@shakers.test\nBcc: x@y")


def test_the_settings_follow_spec_section_6(monkeypatch, tmp_path):
    assert mail.SmtpSettings.from_env({}).host is None
    assert mail.SmtpSettings.from_env({"SHAKERS_SMTP_HOST": "h"}).port == 587
    assert mail.SmtpSettings.from_env({"SHAKERS_SMTP_HOST": "h", "SHAKERS_SMTP_TLS": "ssl"}).port == 465
    assert mail.SmtpSettings.from_env({"SHAKERS_SMTP_HOST": "h", "SHAKERS_SMTP_TLS": "none"}).port == 25
    assert mail.SmtpSettings.from_env({}).mail_from == "policy-reports@localhost"
    only_user = mail.SmtpSettings.from_env({"SHAKERS_SMTP_USER": "u"})
    assert not only_user.login
    config = tmp_path / "smtp.env"
    config.write_text("# mail\nSHAKERS_SMTP_HOST=mail.example.com\nSHAKERS_SMTP_PASSWORD='p w'\n")
    from_file = mail.SmtpSettings.from_env({"SHAKERS_SMTP_CONFIG": str(config), "SHAKERS_SMTP_USER": "u"})
    assert (from_file.host, from_file.user, from_file.password, from_file.login) == ("mail.example.com", "u", "p w", True)
    assert "p w" not in repr(from_file) and "p w" not in from_file.describe()
    with pytest.raises(mail.MailConfigError, match="SHAKERS_SMTP_PORT"):
        mail.SmtpSettings.from_env({"SHAKERS_SMTP_PORT": "smtp"})
