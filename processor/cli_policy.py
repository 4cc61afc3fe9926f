"""The policy editor's commands: `schema`, `test`, `explain`, `diff` (thin shells
over rules.schema, processor.policytest, processor.explain, processor.diff).

processor.cli registers COMMANDS. This module imports processor.cli only when
a command runs, so `python -m processor.cli` (which imports this module while
processor.cli is still being set up) works too.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from pathlib import Path

import click


def _guarded(fn):
    """processor.cli.guarded, looked up when the command runs: PolicyError -> exit 3, InvalidExport -> exit 4."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from processor.cli import guarded

        with warnings.catch_warnings():
            # Libraries' deprecation notices are for us, not for a policy editor's terminal.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return guarded(_pipe_safe(fn))(*args, **kwargs)

    return wrapper


def _pipe_safe(fn):
    """`shakers-rules test | head`: the reader left; stop quietly (Python's documented recipe), no 'unexpected failure'."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)

    return wrapper


class _Day(click.ParamType):
    name = "YYYY-MM-DD"

    def convert(self, value, param, ctx):
        from processor.cli import DAY

        return DAY.convert(value, param, ctx)


DAY = _Day()
_POLICIES_FILE = click.Path(dir_okay=False, path_type=Path)
_EXPORT_DIR = click.Path(file_okay=False, path_type=Path)


def _err(message: str):
    click.echo(message, err=True)


def _workers(workers: int | None) -> int:
    return (os.cpu_count() or 1) if workers is None else workers


# --------------------------------------------------------------------------- schema
@click.command()
@click.option("--markdown", is_flag=True, help="Print the vocabulary of facts and actions as Markdown tables (the editor's guide pastes them).")
@click.option("--check", "check_file", type=_POLICIES_FILE, default=None,
              help="Check that this committed schema file equals the schema the program builds; exit 1 when it does not.")
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


# --------------------------------------------------------------------------- test
@click.command("test")
@click.argument("policies_path", metavar="[POLICIES]", default="policies.yaml", type=_POLICIES_FILE)
@click.option("--cases", "case_paths", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="A case file or a directory of them (repeatable). Default: policy_tests/ beside POLICIES, else ./policy_tests.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the failures and the final count.")
@_guarded
def test_policies(policies_path, case_paths, quiet):
    """Run the policy test cases (policy_tests/*.yaml) against POLICIES through durable-rules.

    Each case prints PASS or FAIL (with what differs), then 'N passed, M failed'. Exit 1 when any case fails."""
    from processor.policytest import case_files, default_cases, report_lines, run_cases
    from rules.document import load_policies

    policies = load_policies(policies_path)
    paths = list(case_paths) or [default_cases(policies_path)]
    if not case_files([p for p in paths if p.exists()]):
        _err(f"no test cases found in {', '.join(map(str, paths))} — write cases as policy_tests/*.yaml (docs/policies.md shows how), "
             "or name them with --cases")
        sys.exit(2)
    results = run_cases(policies, paths)
    shown = [r for r in results if not (quiet and r.passed)]
    for line in report_lines(shown)[:-1]:
        click.echo(line)
    passed = sum(r.passed for r in results)
    click.echo(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if all(r.passed for r in results) else 1)


# --------------------------------------------------------------------------- explain
@click.command()
@click.option("--export", "export_dir", required=True, type=_EXPORT_DIR, help="The night's export directory.")
@click.option("--project", "project_id", required=True, help="The project to explain.")
@click.option("--as-of", type=DAY, default=None, help="The night. Default: the manifest's export date, else today (UTC).")
@click.option("--policies", "policies_path", default="policies.yaml", show_default=True, type=_POLICIES_FILE, help="The policies file.")
@click.option("--policy", "only", multiple=True, metavar="ID", help="Show only this policy (repeatable). Default: every policy.")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
@_guarded
def explain(export_dir, project_id, as_of, policies_path, only, as_json):
    """For one project: every policy, whether it fired, and each condition's actual value against its threshold."""
    from processor.explain import ProjectNotFound, explain_project, explanation_lines
    from rules.document import did_you_mean, load_policies

    policies = load_policies(policies_path)
    ids = [p.id for p in policies.policies]
    for policy_id in only:
        if policy_id not in ids:
            raise click.BadParameter(f"'{policy_id}' is not a policy of {policies_path}{did_you_mean(policy_id, ids)}", param_hint="--policy")
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
@click.option("--baseline", "baseline_path", required=True, type=_POLICIES_FILE, help="The policies as they are (e.g. policies.yaml).")
@click.option("--candidate", "candidate_path", required=True, type=_POLICIES_FILE, help="The policies as you would change them.")
@click.option("--as-of", type=DAY, default=None, help="The night. Default: the manifest's export date, else today (UTC).")
@click.option("--json", "as_json", is_flag=True, help='Print {"added": [...], "removed": [...], "changed": [...]} decision rows as JSON.')
@click.option("--examples", type=click.IntRange(0, 1000), default=3, show_default=True, help="Examples shown per policy and action.")
@click.option("--workers", type=click.IntRange(0, 64), default=None, help="Engine worker processes (default: the machine's cores).")
@_guarded
def diff(export_dir, baseline_path, candidate_path, as_of, as_json, examples, workers):
    """Backtest a policy change: evaluate BASELINE and CANDIDATE on the same night and show the decisions
    added, removed and changed. Writes nothing, records nothing in the ledger, sends nothing."""
    from processor.diff import diff_lines, diff_night, diff_json
    from rules.document import PolicyError, load_policies

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
    result = diff_night(loaded["baseline"], loaded["candidate"], export_dir, as_of, workers=_workers(workers))
    if as_json:
        click.echo(json.dumps(diff_json(result), indent=2, default=str))
    else:
        for line in diff_lines(result, examples=examples):
            click.echo(line)


COMMANDS = [schema, test_policies, explain, diff]
