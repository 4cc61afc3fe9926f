"""An editor's change of the shipped thresholds fails only policy cases, by name, never a Python test: a copy
of the repository with every threshold in policies.yaml moved by one, and pytest run on the copy.

All thresholds are moved at once, not one at a time: one pytest run on the copy instead of one per
threshold (eight times the wall time on a 2-core machine), and a Python test that hard-codes any of them
fails all the same. The Python tests run are those whose nights are evaluated against policies.yaml; left
out are those whose outcome no threshold decides (the export's reading and refusals, the outbox, locks,
layers), those that compare two ways of making the same decisions under one policies file (bulk, generated
and compared outputs, engine scale, Dask), and those that pin their own thresholds (policy tooling,
backtest, coverage: conftest.policies_with)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

THRESHOLD_DEPENDENT_TESTS = ["tests/test_evaluate.py", "tests/test_policies.py", "tests/test_engine.py",
                             "tests/test_prefilter.py", "tests/test_decide_order.py", "tests/test_reports.py",
                             "tests/test_run.py", "tests/test_nightly.py", "tests/test_continuity.py",
                             "tests/test_mail.py", "tests/test_policy_corpus.py",
                             "tests/test_policy_cases_in_pytest.py", "policy_tests"]


def _copy_of_the_repository(to: Path) -> Path:
    """The files git knows (committed or not yet), as a checkout would have them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)
    return to


def _every_threshold_moved(policies: Path) -> dict[str, tuple[int, int]]:
    """Each `thresholds:` entry of the copy's policies.yaml one more than shipped: name -> (shipped, now)."""
    text = policies.read_text(encoding="utf-8")
    block = re.search(r"^thresholds:\n((?:[ \t]+.*\n|\n)+)", text, flags=re.M)
    assert block, "policies.yaml has no thresholds: block"
    moved = {}

    def bump(m: re.Match) -> str:
        indent, name, spaces, value = m.groups()
        moved[name] = (int(value), int(value) + 1)
        return f"{indent}{name}:{spaces}{int(value) + 1}"

    changed = re.sub(r"^([ \t]+)(\w+):(\s*)(-?\d+)", bump, block.group(1), flags=re.M)
    policies.write_text(text[:block.start(1)] + changed + text[block.end(1):], encoding="utf-8")
    return moved


def test_changing_every_shipped_threshold_fails_only_policy_cases_by_name(tmp_path):
    copy = _copy_of_the_repository(tmp_path / "repo")
    moved = _every_threshold_moved(copy / "policies.yaml")
    assert len(moved) >= 8, moved
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           "-rfE", "-o", "addopts=", *THRESHOLD_DEPENDENT_TESTS],
                          cwd=copy, env={**_env(), "PYTHONPATH": str(copy)}, capture_output=True, text=True,
                          timeout=1500)
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, flags=re.M)
    python_failures = [f for f in failures if not f.startswith("policy_tests/")]
    assert python_failures == [], "Python tests broke on a threshold change:\n" + done.stdout[-6000:]
    # The policy cases sitting on the thresholds' edges fail, each named by its file and case.
    assert done.returncode == 1 and failures, done.stdout[-3000:]
    assert all(re.match(r"policy_tests/\w+\.yaml::\S", f) for f in failures), failures


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SHAKERS_", "PYTEST_"))}
