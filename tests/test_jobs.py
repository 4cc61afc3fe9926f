"""What the scheduler runs (jobs/): the wrapper script runs here against a real exports root; the
crontab line and the systemd units are checked for syntax (systemd-analyze where present, else a parser)."""
from __future__ import annotations

import configparser
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from night import Night

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"
WRAPPER = JOBS / "shakers-nightly"
SHAKERS = Path(sys.executable).with_name("shakers-rules")
D1, D2 = dt.date(2026, 11, 23), dt.date(2026, 11, 24)
STAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ shakers-nightly\[\d+\] ")


# ----------------------------------------------------------------------------- the wrapper
def _night(as_of: dt.date) -> Night:
    n = Night(as_of)
    n.project("P1")
    n.milestone("P1", escrow="10.00")
    return n


@pytest.fixture
def site(tmp_path):
    """An installation in miniature: exports, an environment file, a log directory."""
    for day in (D1, D2):
        _night(day).write(tmp_path / "exports" / day.isoformat())
    env_file = tmp_path / "env"
    env_file.write_text(
        "# shakers-rules settings\n"
        f"SHAKERS_EXPORTS_ROOT={tmp_path / 'exports'}\n"
        f"SHAKERS_RUNS_ROOT=\"{tmp_path / 'runs'}\"\n"
        f"SHAKERS_LEDGER='{tmp_path / 'state' / 'ledger.sqlite'}'\n"
        f"SHAKERS_POLICIES={ROOT / 'policies.yaml'}\n"
        f"SHAKERS_BIN={SHAKERS}\n"
        f"SHAKERS_LOG={tmp_path / 'log' / 'nightly.log'}\n"
        "SHAKERS_NIGHTLY_ARGS=--workers 1\n"
        "\n"
        f"SHAKERS_NOTE=$(touch {tmp_path / 'executed'})\n")
    return tmp_path


def run_wrapper(site: Path, **extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAKERS_") and k != "INVOCATION_ID"}
    env.update(SHAKERS_ENV_FILE=str(site / "env"), HOME=str(site))
    env.update(extra)
    return subprocess.run(["bash", str(WRAPPER)], capture_output=True, text=True, env=env, timeout=600, cwd=site)


def test_the_wrapper_is_an_executable_bash_script_that_parses():
    assert os.access(WRAPPER, os.X_OK)
    assert WRAPPER.read_text().startswith("#!/usr/bin/env bash\n")
    assert subprocess.run(["bash", "-n", str(WRAPPER)], capture_output=True).returncode == 0


def test_the_wrapper_runs_the_nightly_job_and_logs_each_line_with_a_time_stamp(site):
    done = run_wrapper(site)
    assert done.returncode == 0, done.stderr + (site / "log" / "nightly.log").read_text()
    assert (site / "runs" / D1.isoformat() / "decisions.csv").exists()
    assert (site / "runs" / D2.isoformat() / "decisions.csv").exists()
    assert (site / "state" / "ledger.sqlite").exists()
    log = (site / "log" / "nightly.log").read_text().splitlines()
    assert log and all(STAMPED.match(line) for line in log)
    text = "\n".join(log)
    assert "start: " in text and f"{D1}: done" in text and "2 night(s): 2 done" in text and text.endswith("exit 0")
    # The environment file is data, never code.
    assert not (site / "executed").exists()

    again = run_wrapper(site)
    assert again.returncode == 0
    assert "nothing to do" in (site / "log" / "nightly.log").read_text().splitlines()[-2]
    # A start that succeeds prints nothing, so cron mails nobody.
    assert (done.stdout, done.stderr, again.stdout, again.stderr) == ("", "", "", "")


def test_the_wrapper_exits_with_the_jobs_status_for_the_scheduler(site):
    (site / "exports" / D1.isoformat() / "users.csv").unlink()
    done = run_wrapper(site)
    assert done.returncode == 4
    log = (site / "log" / "nightly.log").read_text()
    assert f"{D1}: invalid" in log and "exit 4" in log


def test_a_failed_start_prints_its_exit_and_its_log_lines_for_cron_to_mail(site):
    run_wrapper(site)                                      # an earlier start, whose lines are not repeated
    (site / "exports" / "2026-11-25").mkdir()
    _night(dt.date(2026, 11, 25)).write(site / "exports" / "2026-11-25")
    (site / "exports" / "2026-11-25" / "users.csv").unlink()
    done = run_wrapper(site)
    assert done.returncode == 4 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0].startswith("shakers-nightly: exit 4 (a night's export is invalid or incomplete)")
    assert all(STAMPED.match(line) for line in lines[1:])
    body = "\n".join(lines[1:])
    assert "2026-11-25: invalid" in body and "users.csv" in body and body.endswith("exit 4")
    assert f"{D1}: done" not in body and body.count("start: ") == 1


@pytest.mark.parametrize("setting, value, says", [
    ("SHAKERS_BIN", "/nonexistent/shakers-rules",
     "SHAKERS_BIN=/nonexistent/shakers-rules is not an executable program"),
    ("SHAKERS_LEDGER", "", "set SHAKERS_LEDGER in"),
])
def test_the_wrappers_own_setup_errors_go_to_its_log_as_well_as_stderr(site, setting, value, says):
    env_file = site / "env"
    text = re.sub(rf"(?m)^{setting}=.*$", f"{setting}={value}" if value else "", env_file.read_text())
    env_file.write_text(text + "not a setting\n")
    done = run_wrapper(site)
    assert done.returncode == 2
    assert says in done.stderr
    log = (site / "log" / "nightly.log").read_text().splitlines()
    assert log and all(STAMPED.match(line) for line in log)
    assert says in log[-1]
    assert any("line 11: ignored, it is not NAME=value" in line for line in log)   # said in the file's own log
    assert not (site / "runs").exists()


def test_a_missing_environment_file_is_named_in_the_log_given_by_the_environment(tmp_path):
    done = run_wrapper(tmp_path, SHAKERS_ENV_FILE=str(tmp_path / "nowhere.env"), SHAKERS_LOG=str(tmp_path / "n.log"))
    assert done.returncode == 2
    assert f"the environment file {tmp_path / 'nowhere.env'} does not exist" in done.stderr
    assert f"{tmp_path / 'nowhere.env'} does not exist" in (tmp_path / "n.log").read_text()


def test_the_log_file_is_rotated_past_its_size_keeping_a_fixed_number(site):
    for _ in range(4):
        run_wrapper(site, SHAKERS_LOG_MAX_BYTES="10", SHAKERS_LOG_KEEP="2")
    logs = sorted(p.name for p in (site / "log").iterdir())
    assert logs == ["nightly.log", "nightly.log.1", "nightly.log.2"]
    assert "nothing to do" in (site / "log" / "nightly.log").read_text()


def test_under_systemd_the_wrapper_writes_to_the_journal_not_a_file(site):
    done = run_wrapper(site, SHAKERS_LOG="journal")
    assert done.returncode == 0, done.stderr
    assert "2 night(s): 2 done" in done.stdout and done.stdout.rstrip().endswith("shakers-nightly: exit 0")
    assert not (site / "log").exists()


def test_the_wrapper_names_the_settings_that_are_missing(tmp_path):
    (tmp_path / "env").write_text(f"SHAKERS_EXPORTS_ROOT={tmp_path}\n")
    done = run_wrapper(tmp_path)
    assert done.returncode == 2
    assert "SHAKERS_RUNS_ROOT SHAKERS_LEDGER SHAKERS_POLICIES" in done.stderr


SETPRIV = shutil.which("setpriv")


@pytest.fixture
def nobodys_site():
    """A directory the unprivileged user `nobody` (group nogroup) can enter, outside pytest's private tmp."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="shakers-envfile-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None,
                    reason="needs root and setpriv to run the wrapper as another user")
@pytest.mark.parametrize("mode, group, readable", [(0o640, "nogroup", True), (0o600, "root", False)])
def test_the_documented_env_file_permissions_let_a_non_root_service_user_read_it(nobodys_site, mode, group, readable):
    """docs/operations.md and docs/reports.md: chmod 640, owner root:<the service's group>."""
    import grp

    env_file = nobodys_site / "env"
    env_file.write_text("".join(f"{name}={nobodys_site}\n" for name in
                                ("SHAKERS_EXPORTS_ROOT", "SHAKERS_RUNS_ROOT", "SHAKERS_LEDGER", "SHAKERS_POLICIES"))
                        + "SHAKERS_BIN=/bin/true\nSHAKERS_LOG=journal\nSHAKERS_SMTP_PASSWORD=secret\n")
    os.chown(env_file, 0, grp.getgrnam(group).gr_gid)
    env_file.chmod(mode)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(nobodys_site),
           "SHAKERS_ENV_FILE": str(env_file)}
    done = subprocess.run([SETPRIV, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "bash", str(WRAPPER)],
                          capture_output=True, text=True, env=env, cwd=nobodys_site, timeout=60)
    if readable:
        assert done.returncode == 0, done.stderr
        assert done.stdout.rstrip().endswith("shakers-nightly: exit 0")
    else:
        assert done.returncode == 2
        assert f"cannot read the environment file {env_file} as user nobody (-rw------- root:root)" in done.stderr
        assert f"chown root:shakers {env_file} && chmod 640 {env_file}" in done.stderr


def test_both_docs_give_the_env_file_the_same_owner_and_mode_which_the_services_user_can_read():
    service = _unit("shakers-rules.service")["Service"]
    wanted = f"chmod 640, owner root:{service['Group']}"
    for doc in ("docs/operations.md", "docs/reports.md"):
        text = (ROOT / doc).read_text()
        assert wanted in text, doc
        assert not re.search(r"chmod 0?[46]00 /", text), f"{doc} still gives a file a mode the service user cannot read"
    assert service["User"] != "root" and service["Group"] == "shakers"


# ----------------------------------------------------------------------------- crontab
CRON_FIELDS = [("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7)]


def _cron_field_ok(text: str, low: int, high: int) -> bool:
    for part in text.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return False
        if base == "*":
            continue
        bounds = base.split("-")
        if len(bounds) > 2 or not all(b.isdigit() and low <= int(b) <= high for b in bounds):
            return False
        if len(bounds) == 2 and int(bounds[0]) > int(bounds[1]):
            return False
    return True


def parse_crontab(text: str) -> tuple[dict[str, str], list[tuple[list[str], str]]]:
    env, entries = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", line)
        if m:
            env[m.group(1)] = m.group(2)
            continue
        fields = line.split(None, 5)
        assert len(fields) == 6, f"crontab line {number}: five time fields and a command expected: {line!r}"
        for value, (name, low, high) in zip(fields[:5], CRON_FIELDS):
            assert _cron_field_ok(value, low, high), f"crontab line {number}: bad {name} {value!r}"
        entries.append((fields[:5], fields[5]))
    return env, entries


def test_the_crontab_line_runs_the_wrapper_every_night():
    env, entries = parse_crontab((JOBS / "crontab").read_text())
    assert len(entries) == 1
    (minute, hour, dom, month, dow), command = entries[0]
    assert minute.isdigit() and hour.isdigit() and (dom, month, dow) == ("*", "*", "*")  # once a day
    assert command.split()[0].endswith("/jobs/shakers-nightly")
    assert env["SHELL"] == "/bin/bash" and env.get("CRON_TZ") == "UTC"


def test_the_crontab_mails_a_failed_start_to_someone_and_the_operations_guide_says_so():
    env, _entries = parse_crontab((JOBS / "crontab").read_text())
    assert "@" in env.get("MAILTO", "")   # an address to edit, not cron's default of the local user
    assert "MAILTO" in (ROOT / "docs" / "operations.md").read_text()


def test_the_crontab_parser_refuses_what_cron_would():
    with pytest.raises(AssertionError):
        parse_crontab("61 3 * * * /x\n")
    with pytest.raises(AssertionError):
        parse_crontab("30 3 * * /x\n")


# ----------------------------------------------------------------------------- systemd
def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string((JOBS / name).read_text())
    return unit


def test_the_service_and_timer_say_what_a_nightly_job_needs():
    service, timer = _unit("shakers-rules.service"), _unit("shakers-rules.timer")
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"].endswith("/jobs/shakers-nightly")
    assert service["Service"]["Environment"] or service["Service"]["EnvironmentFile"]
    assert timer["Timer"]["OnCalendar"] and timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["Unit"] == "shakers-rules.service"
    assert timer["Install"]["WantedBy"] == "timers.target"


@pytest.fixture
def units_here(tmp_path):
    """The units as installed, with ExecStart pointing at this checkout's wrapper (verify checks it exists)."""
    service = (JOBS / "shakers-rules.service").read_text()
    service = re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={WRAPPER}", service)
    (tmp_path / "shakers-rules.service").write_text(service)
    shutil.copy(JOBS / "shakers-rules.timer", tmp_path / "shakers-rules.timer")
    shutil.copy(JOBS / FAILURE_TEMPLATE, tmp_path / FAILURE_TEMPLATE)
    return tmp_path


FAILURE_TEMPLATE = "shakers-rules-failure@.service"
FAILURE_INSTANCE = "shakers-rules-failure@shakers-rules.service.service"   # what OnFailure= starts


def test_a_failed_service_starts_the_failure_template_which_logs_at_error_priority():
    on_failure = _unit("shakers-rules.service")["Unit"]["OnFailure"]
    assert on_failure == "shakers-rules-failure@%n.service"
    failure = _unit(FAILURE_TEMPLATE)["Service"]
    assert failure["Type"] == "oneshot"
    command = failure["ExecStart"].split()
    assert command[0] in ("/usr/bin/logger", "/usr/bin/systemd-cat") and "daemon.err" in command


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                    reason="systemd-analyze is not installed; the parser test above still runs")
def test_systemd_analyze_verifies_the_service_and_timer(units_here):
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", "shakers-rules.service", "shakers-rules.timer",
                           FAILURE_INSTANCE], capture_output=True, text=True, cwd=units_here, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Unknown" not in done.stderr and "ignoring" not in done.stderr, done.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_would_catch_a_missing_or_broken_failure_template(units_here):
    template = units_here / FAILURE_TEMPLATE
    template.write_text(template.read_text().replace("/usr/bin/logger", "/usr/bin/no-such-logger"))
    broken = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", FAILURE_INSTANCE],
                            capture_output=True, text=True, cwd=units_here, timeout=120)
    assert broken.returncode != 0 and "no-such-logger" in broken.stderr
    template.unlink()
    missing = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", FAILURE_INSTANCE],
                             capture_output=True, text=True, cwd=units_here, timeout=120)
    assert missing.returncode != 0


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_would_catch_a_broken_timer(units_here):
    timer = units_here / "shakers-rules.timer"
    timer.write_text(timer.read_text().replace("OnCalendar=", "OnCalender="))
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", "shakers-rules.service", "shakers-rules.timer"],
                          capture_output=True, text=True, cwd=units_here, timeout=120)
    assert done.returncode != 0 or "Unknown key" in done.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_the_timer_fires_once_a_day_at_a_fixed_utc_time():
    on_calendar = _unit("shakers-rules.timer")["Timer"]["OnCalendar"]
    done = subprocess.run([SYSTEMD_ANALYZE, "calendar", "--iterations=2", on_calendar], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    elapses = re.findall(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", done.stdout)
    assert len(elapses) == 2
    first, second = (dt.datetime.fromisoformat(e) for e in elapses)
    assert second - first == dt.timedelta(days=1)
