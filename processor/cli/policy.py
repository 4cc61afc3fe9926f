"""The policy editor's commands: `schema`, `validate`, `test`, `explain`, `diff`, `backtest`, `promote`, `history`
(thin shells over rules.*, processor.tools.policytest/explain/diff/backtest/promote).

processor.cli.main adds COMMANDS to the group.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from pathlib import Path

import click

from processor.cli.common import DAY, guarded


def _guarded(fn):
    """processor.cli.common.guarded, with libraries' warnings silenced: PolicyError -> exit 3,
    InvalidExport -> exit 4."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            # Libraries' deprecation notices are for us, not for a policy editor's terminal.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return guarded(_pipe_safe(fn))(*args, **kwargs)

    return wrapper


def _pipe_safe(fn):
    """`shakers-rules test | head`: the reader left; stop quietly (Python's documented recipe), no
    'unexpected failure'."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)

    return wrapper


_POLICIES_FILE = click.Path(dir_okay=False, path_type=Path)
_EXPORT_DIR = click.Path(file_okay=False, path_type=Path)


def _err(message: str):
    click.echo(message, err=True)


def _workers(workers: int | None) -> int:
    return (os.cpu_count() or 1) if workers is None else workers


# --------------------------------------------------------------------------- schema
@click.command()
@click.option("--markdown", is_flag=True, help="Print the vocabulary of facts and actions as Markdown tables (the "
                                               "editor's guide pastes them).")
@click.option("--check", "check_file", type=_POLICIES_FILE, default=None,
              help="Check that this committed schema file equals the schema the program builds; exit 1 when it does "
                   "not.")
@_guarded
def schema(markdown, check_file):
    """Print the JSON Schema of policies.yaml (editors use it to complete and check while typing)."""
    from rules.schema import schema_text, vocabulary_markdown

    if check_file is not None:
        try:
            current = check_file.read_text(encoding="utf-8")
        except OSError as e:
            _err(f"{check_file}: cannot be read: {e.strerror}")
            sys.exit(1)
        if current != schema_text():
            _err(f"{check_file} is out of date: write it again with `shakers-rules schema > {check_file}`")
            sys.exit(1)
        click.echo(f"{check_file}: up to date")
        return
    click.echo(vocabulary_markdown() if markdown else schema_text(), nl=False)


# --------------------------------------------------------------------------- validate
_FORMAT = click.Choice(["text", "json"])


@click.command()
@click.argument("file", default="policies.yaml", type=_POLICIES_FILE)
@click.option("--format", "fmt", type=_FORMAT, default="text", show_default=True,
              help="json: {\"file\", \"valid\", \"problems\": [{file, line, column, message, code, severity}]} on "
                   "stdout.")
@_guarded
def validate(file, fmt):
    """Check a policies file: every problem, each as FILE:LINE:COL: what is wrong — what is expected."""
    from processor.tools.problem_codes import policy_problem_code, problem_json
    from rules.document import load_policies
    from rules.grammar import PolicyError

    if fmt == "text":
        policies = load_policies(file)
        click.echo(f"{file}: OK — {len(policies.policies)} policies, {len(policies.thresholds)} thresholds")
        for note in policies.notes:  # likely slips that are not errors: a threshold nothing uses
            _err(note.located(str(file)))
        return
    try:
        policies = load_policies(file)
    except PolicyError as e:
        click.echo(json.dumps(_problems_json(e), indent=2, ensure_ascii=False))
        sys.exit(3)  # invalid policies, as in text
    notes = [problem_json(str(file), p, policy_problem_code(p.message), "note") for p in policies.notes]
    click.echo(json.dumps({"file": str(file), "valid": True, "policies": len(policies.policies),
                           "thresholds": len(policies.thresholds), "problems": notes}, indent=2, ensure_ascii=False))


def _problems_json(e) -> dict:
    """A policies file's PolicyError as `--format json` prints it."""
    from processor.tools.problem_codes import policy_problem_code, problem_json

    return {"file": e.filename, "valid": False,
            "problems": [problem_json(e.filename, p, policy_problem_code(p.message)) for p in e.problems]}


# --------------------------------------------------------------------------- test
@click.command("test")
@click.argument("policies_path", metavar="[POLICIES]", default="policies.yaml", type=_POLICIES_FILE)
@click.option("--cases", "case_paths", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="A case file or a directory of them (repeatable). Default: policy_tests/ beside POLICIES, else "
                   "./policy_tests.")
@click.option("--run", "pattern", default=None, metavar="PATTERN",
              help="Run only the cases whose name this regular expression finds (e.g. 'contact|edge').")
@click.option("--coverage", is_flag=True,
              help="Also list, for every policy and condition, whether some case makes it true and some false, "
                   "and for each threshold whether a case sits at its edge on both sides.")
@click.option("--fail-under", type=click.FloatRange(0, 100), default=None, metavar="PERCENT",
              help="With --coverage: fail (exit 1) when coverage is below PERCENT, naming the uncovered conditions.")
@click.option("--format", "fmt", type=_FORMAT, default="text", show_default=True,
              help="json: the cases, the problems (file, line, column, message, code) and the coverage, on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the failures and the final count.")
@_guarded
def test_policies(policies_path, case_paths, pattern, coverage, fail_under, fmt, quiet):
    """Run the policy test cases (policy_tests/*.yaml) against POLICIES through durable-rules.

    Each case prints PASS or FAIL (with what differs), then 'N passed, M failed'. Exit 1 when any case
    fails, or when --coverage --fail-under finds the coverage below it."""
    import re

    from processor.tools.cases import case_files, default_cases
    from processor.tools.policytest import Coverage, report_lines, run_cases, tests_json
    from rules.document import load_policies
    from rules.grammar import PolicyError

    if fail_under is not None and not coverage:
        raise click.UsageError("--fail-under needs --coverage (e.g. --coverage --fail-under 100)")
    only = None
    if pattern is not None:
        try:
            only = re.compile(pattern)
        except re.error as e:
            raise click.BadParameter(f"'{pattern}' is not a regular expression: {e} — e.g. 'contact' or 'edge|grace'",
                                     param_hint="--run")
    try:
        policies = load_policies(policies_path)
    except PolicyError as e:
        if fmt != "json":
            raise
        click.echo(json.dumps(_problems_json(e), indent=2, ensure_ascii=False))
        sys.exit(3)  # invalid policies: no case runs
    paths = list(case_paths) or [default_cases(policies_path)]
    if not case_files([p for p in paths if p.exists()]):
        _err(f"no test cases found in {', '.join(map(str, paths))} — write cases as policy_tests/*.yaml "
             f"(docs/policies.md shows how), "
             "or name them with --cases")
        sys.exit(2)
    cover = Coverage(policies) if coverage else None
    results = run_cases(policies, paths, only=only, coverage=cover)
    if only is not None and not any(r.name != "(the case file)" for r in results):
        _err(f"no case's name matches --run '{pattern}' in {', '.join(map(str, paths))} — "
             "give part of a case's name (it is a regular expression)")
        sys.exit(2)
    below = cover is not None and fail_under is not None and cover.percent < fail_under
    failed = not all(r.passed for r in results) or below
    if fmt == "json":
        click.echo(json.dumps(tests_json(results, cover, fail_under), indent=2, ensure_ascii=False))
        sys.exit(1 if failed else 0)
    shown = [r for r in results if not (quiet and r.passed)]
    for line in report_lines(shown)[:-1]:
        click.echo(line)
    passed = sum(r.passed for r in results)
    if cover is not None:
        for line in cover.lines(uncovered_only=quiet):
            click.echo(line)
    click.echo(f"{passed} passed, {len(results) - passed} failed")
    if below:
        _err(f"coverage {cover.percent_text} is below --fail-under {fail_under:g}%; "
             "write cases (policy_tests/*.yaml) that make these conditions so:")
        for row in cover.uncovered():
            _err(f"{row.where}: {row.policy}: {row.test}: {'; '.join(row.missing())}")
    sys.exit(1 if failed else 0)


# --------------------------------------------------------------------------- explain
@click.command()
@click.option("--export", "export_dir", required=True, type=_EXPORT_DIR, help="The night's export directory.")
@click.option("--project", "project_id", required=True, help="The project to explain.")
@click.option("--as-of", type=DAY, default=None, help="The night. Default: the manifest's export date, else today "
                                                      "(UTC).")
@click.option("--policies", "policies_path", default="policies.yaml", show_default=True, type=_POLICIES_FILE,
              help="The policies file.")
@click.option("--policy", "only", multiple=True, metavar="ID",
              help="Show only this policy (repeatable). Default: every policy.")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
@_guarded
def explain(export_dir, project_id, as_of, policies_path, only, as_json):
    """For one project: every policy, whether it fired, and each condition's actual value against its threshold."""
    from processor.tools.explain import ProjectNotFound, explain_project, explanation_lines
    from rules.document import load_policies
    from rules.grammar import did_you_mean

    policies = load_policies(policies_path)
    ids = [p.id for p in policies.policies]
    for policy_id in only:
        if policy_id not in ids:
            raise click.BadParameter(f"'{policy_id}' is not a policy of {policies_path}{did_you_mean(policy_id, ids)}",
                                     param_hint="--policy")
    try:
        explanation = explain_project(policies, export_dir, project_id, as_of)
    except ProjectNotFound as e:
        _err(str(e))
        sys.exit(2)
    if only:
        explanation["policies"] = [p for p in explanation["policies"] if p["id"] in only]
    if as_json:
        click.echo(json.dumps(explanation, indent=2, default=str))
    else:
        for line in explanation_lines(explanation):
            click.echo(line)


# --------------------------------------------------------------------------- diff
@click.command()
@click.option("--export", "export_dir", required=True, type=_EXPORT_DIR, help="The night's export directory.")
@click.option("--baseline", "baseline_path", required=True, type=_POLICIES_FILE,
              help="The policies as they are (e.g. policies.yaml).")
@click.option("--candidate", "candidate_path", required=True, type=_POLICIES_FILE,
              help="The policies as you would change them.")
@click.option("--as-of", type=DAY, default=None, help="The night. Default: the manifest's export date, else today "
                                                      "(UTC).")
@click.option("--json", "as_json", is_flag=True, help='Print {"added": [...], "removed": [...], "changed": [...]} '
                                                      'decision rows as JSON.')
@click.option("--examples", type=click.IntRange(0, 1000), default=3, show_default=True,
              help="Examples shown per policy and action.")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Engine worker processes (default: the machine's cores).")
@_guarded
def diff(export_dir, baseline_path, candidate_path, as_of, as_json, examples, workers):
    """Backtest a policy change: evaluate BASELINE and CANDIDATE on the same night and show the decisions
    added, removed and changed. Writes nothing, records nothing in the ledger, sends nothing."""
    from processor.tools.diff import diff_json, diff_lines, diff_night

    loaded = _both(baseline_path, candidate_path)
    result = diff_night(loaded["baseline"], loaded["candidate"], export_dir, as_of, workers=_workers(workers))
    if as_json:
        click.echo(json.dumps(diff_json(result), indent=2, default=str))
    else:
        for line in diff_lines(result, examples=examples):
            click.echo(line)


# --------------------------------------------------------------------------- backtest
@click.command()
@click.option("--exports-root", "exports_root", required=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="The directory of nights' exports, one YYYY-MM-DD directory each (as `nightly` reads them).")
@click.option("--baseline", "baseline_path", required=True, type=_POLICIES_FILE,
              help="The policies as they are (e.g. policies.yaml).")
@click.option("--candidate", "candidate_path", required=True, type=_POLICIES_FILE,
              help="The policies as you would change them.")
@click.option("--from", "since", type=DAY, default=None, help="The first night (default: the oldest there is).")
@click.option("--to", "until", type=DAY, default=None, help="The last night (default: the newest there is).")
@click.option("--json", "as_json", is_flag=True, help="Print the backtest as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a self-contained page with a per-night chart to this file.")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Engine worker processes (default: none for a night of up to 20,000 projects, else the machine's "
                   "cores).")
@_guarded
def backtest(exports_root, baseline_path, candidate_path, since, until, as_json, html_path, workers):
    """Replay BASELINE and CANDIDATE over every night of EXPORTS_ROOT, each with its own scratch ledger, and show
    per night and in total what the change would have done: decisions added and removed, projects halted and users
    rejected earlier or later, emails that would have changed. Writes nothing else; the live ledger is never opened."""
    from processor.progress import Progress
    from processor.tools.backtest import backtest as run_backtest
    from processor.tools.backtest import backtest_html, backtest_json, backtest_lines

    if since and until and since > until:
        raise click.BadParameter(f"--from {since} is after --to {until}", param_hint="--from")
    loaded = _both(baseline_path, candidate_path)
    try:
        result = run_backtest(loaded["baseline"], loaded["candidate"], exports_root, since=since, until=until,
                              workers=workers, progress=Progress())
    except ValueError as e:
        _err(f"{e} — give --from/--to within it")
        sys.exit(2)
    if html_path is not None:
        from processor import files

        html_path.parent.mkdir(parents=True, exist_ok=True)
        files.write_text(html_path, backtest_html(result))  # whole or not at all
        _err(f"page written to {html_path}")
    if as_json:
        click.echo(json.dumps(backtest_json(result), indent=2, default=str))
    else:
        for line in backtest_lines(result):
            click.echo(line)


def _both(baseline_path: Path, candidate_path: Path) -> dict:
    """Both policies files, every problem of both reported (the last one's by the guard: exit 3)."""
    from rules.document import load_policies
    from rules.grammar import PolicyError

    loaded, errors = {}, []
    for role, path in (("baseline", baseline_path), ("candidate", candidate_path)):
        try:
            loaded[role] = load_policies(path)
        except PolicyError as e:
            errors.append(e)
    if errors:
        for e in errors[:-1]:  # the last one is reported by the guard
            for p in e.problems:
                _err(p.located(e.filename))
        raise errors[-1]
    return loaded


# --------------------------------------------------------------------------- promote, history
_LEDGER_FILE = click.Path(dir_okay=False, path_type=Path)
_LEDGER_HELP = "The ledger the promotion is recorded in. Default: $SHAKERS_LEDGER, else the nightly job's default."


@click.command()
@click.argument("candidate", required=False, type=_POLICIES_FILE)
@click.option("--to", "live", type=_POLICIES_FILE, default=None,
              help="The live policies file. Default: $SHAKERS_POLICIES, else policies.yaml (as `run` reads).")
@click.option("--note", default="", help="Why: recorded with the promotion, listed by `history`.")
@click.option("--yes", is_flag=True, help="Replace the live file without asking.")
@click.option("--rollback", is_flag=True, help="Put back the file the live one held before its last promotion.")
@click.option("--cases", "case_paths", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Case files or directories (repeatable). Default: policy_tests/ beside CANDIDATE, else here.")
@click.option("--exports-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="SHAKERS_EXPORTS_ROOT",
              help="The nightly job's exports (YYYY-MM-DD directories): the newest night is diffed. "
                   "Default: $SHAKERS_EXPORTS_ROOT (as the nightly job), else no diff.")
@click.option("--ledger", "ledger_path", type=_LEDGER_FILE, default=None, help=_LEDGER_HELP)
@click.option("--workers", type=click.IntRange(0, 64), default=None, help="Engine worker processes for the diff.")
@_guarded
def promote(candidate, live, note, yes, rollback, case_paths, exports_root, ledger_path, workers):
    """Install CANDIDATE as the live policies file: validate it, run the policy cases, show the last night's
    diff, then (asked, or --yes) replace the live file atomically and record who, when, both SHA-256s, the note
    and the diff's counts in the ledger. `promote --rollback` restores the previous file byte for byte.

    Exit 3 when the candidate fails validation or a case (the live file is left as it was), 2 when declined."""
    from processor.ledger import Ledger, check_ledger_usable, default_ledger_path
    from processor.ledger.promotions import PROMOTE, ROLLBACK, last_promotion, record_promotion
    from processor.tools.promote import (
        PromoteRefused,
        check_candidate,
        default_live_path,
        replace_live,
        rollback_bytes,
        versions_directory,
        who,
    )

    live = live or default_live_path()
    ledger_path = ledger_path or default_ledger_path()
    if rollback == (candidate is not None):
        raise click.UsageError("give a CANDIDATE file to promote, or --rollback (not both)")
    try:
        if rollback:
            with Ledger(ledger_path) as ledger:
                data = rollback_bytes(live, last_promotion(ledger, str(live.resolve())))
            source, kind, counts, night = versions_directory(live) / _sha(data), ROLLBACK, None, ""
            click.echo(f"rolling {live} back to the file it held before its last promotion ({_sha(data)[:12]})")
        else:
            _, passed = check_candidate(candidate, list(case_paths), live)
            click.echo(f"{candidate}: valid; {passed} policy cases pass")
            counts = _promote_diff(candidate, live, exports_root, workers)
            night = counts["night"] if counts else ""
            data, source, kind = candidate.read_bytes(), candidate, PROMOTE
        if live.exists() and live.read_bytes() == data:
            click.echo(f"{live} already holds this file (SHA-256 {_sha(data)[:12]}): nothing to do")
            return
        if not yes and not _confirmed(f"Replace {live} with {source}?"):
            _err(f"not promoted: {live} was left as it was (give --yes to replace it without asking)")
            sys.exit(2)
        check_ledger_usable(ledger_path)  # a promotion that could not be recorded is not made
        done = replace_live(live, data)
    except PromoteRefused as e:
        _err(str(e))
        sys.exit(e.exit_code)
    with Ledger(ledger_path) as ledger:
        record_promotion(ledger, user=who(), kind=kind, live_path=str(live.resolve()), candidate_path=str(source),
                         old_sha256=done.old_sha256, new_sha256=done.new_sha256, note=note, diff_night=night,
                         diff_counts=counts)
    click.echo(f"{live} replaced: {done.old_sha256[:12] or '(none)'} -> {done.new_sha256[:12]}; "
               f"{'rollback' if rollback else 'promotion'} recorded in {ledger_path}")


def _sha(data: bytes) -> str:
    from processor.tools.promote import sha256

    return sha256(data)


def _confirmed(question: str) -> bool:
    try:
        return click.confirm(question, default=False)
    except click.Abort:  # no answer (end of input): not a yes
        click.echo("", err=True)
        return False


def _promote_diff(candidate: Path, live: Path, exports_root: Path | None, workers: int | None) -> dict | None:
    """The last night's diff of the live file against the candidate, printed; its counts (None: no diff, said why)."""
    from processor.tools.diff import diff_lines, diff_night
    from processor.tools.promote import diff_counts, last_night
    from rules.document import PolicyError, load_policies

    if exports_root is None:
        click.echo("no diff: no --exports-root (or $SHAKERS_EXPORTS_ROOT) names the nightly exports")
        return None
    night = last_night(exports_root) if exports_root.is_dir() else None
    if night is None:
        click.echo(f"no diff: {exports_root} holds no YYYY-MM-DD export directory")
        return None
    if not live.exists():
        click.echo(f"no diff: {live} does not exist yet (this promotion makes it)")
        return None
    try:
        baseline = load_policies(live)
    except PolicyError as e:
        click.echo(f"no diff: the live file {live} does not validate ({e.problems[0].located(str(live))})")
        return None
    d = diff_night(baseline, load_policies(candidate), night, workers=_workers(workers))
    for line in diff_lines(d):
        click.echo(line)
    return diff_counts(d)


@click.command()
@click.option("--ledger", "ledger_path", type=_LEDGER_FILE, default=None, help=_LEDGER_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the promotions as a JSON list.")
@_guarded
def history(ledger_path, as_json):
    """List the policies file's promotions and rollbacks recorded in the ledger, oldest first."""
    from processor.ledger import Ledger, default_ledger_path
    from processor.ledger.promotions import promotions

    ledger_path = ledger_path or default_ledger_path()
    if not ledger_path.exists():
        found: list[dict] = []
    else:
        with Ledger(ledger_path) as ledger:
            found = promotions(ledger)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo(f"no promotion recorded in {ledger_path}")
        return
    for p in found:
        c = p["diff_counts"]
        diff = (f"night {c['night']}: {c['added']} added, {c['removed']} removed, {c['changed']} changed, "
                f"{c['threshold_only']} threshold-only" if c else "no diff")
        click.echo(f"{p['promoted_at']}  {p['kind']:<8}  {p['user']}  {p['live_path']}  "
                   f"{p['old_sha256'][:12] or '(none)'} -> {p['new_sha256'][:12]}  {diff}"
                   + (f"  note: {p['note']}" if p["note"] else ""))


COMMANDS = [schema, validate, test_policies, explain, diff, backtest, promote, history]
