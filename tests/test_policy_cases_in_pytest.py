"""pytest collects every policy case as a test named after it, and a failing case shows what differs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pytest_in(directory: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_shipped_policy_case_is_a_pytest_item_named_after_it():
    from processor.tools.cases import case_files, load_cases

    cases = [f"policy_tests/{path.name}::{case.name}" for path in case_files([ROOT / "policy_tests"])
             for case in load_cases(path)]
    listed = pytest_in(ROOT, "--collect-only", "-q", "policy_tests")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    items = [line for line in listed.stdout.splitlines() if line.startswith("policy_tests/")]
    assert items == cases and len(cases) > 50


def test_a_failing_case_fails_by_name_with_its_differences_and_a_broken_case_file_with_its_line(tmp_path):
    shutil.copy(ROOT / "conftest.py", tmp_path)
    shutil.copy(ROOT / "policies.yaml", tmp_path)
    (tmp_path / "policy_tests").mkdir()
    (tmp_path / "policy_tests" / "escrow.yaml").write_text("""cases:
  - name: a validated milestone is released, its amount
    given:
      milestones:
        - {milestone_id: M1, status: validated, amount: "420.00"}
    expect:
      - {policy: release-validated, amount: "421.00"}
  - name: a pending milestone needs no escrow
    given:
      milestones:
        - {milestone_id: M1, status: pending, escrow: "0"}
    forbid:
      - {policy: escrow-shortfall}
""", encoding="utf-8")
    (tmp_path / "policy_tests" / "broken.yaml").write_text("cases:\n  - name: x\n    gvien: {}\n", encoding="utf-8")
    done = pytest_in(tmp_path, "-q", "policy_tests")
    assert done.returncode == 1
    out = done.stdout
    assert "FAILED policy_tests/escrow.yaml::a validated milestone is released, its amount" in out
    assert "policy_tests/escrow.yaml:2: a validated milestone is released, its amount" in out
    assert "expected, but not made: {policy: release-validated, amount: 421.00}" in out
    assert ("release-validated: release_milestone_payment on P1 (subject T1, milestone M1, assignee T1, "
            "amount 420.00)") in out
    assert "FAILED policy_tests/broken.yaml::(the case file)" in out
    assert "policy_tests/broken.yaml:3:" in out and "unknown key 'gvien'" in out and "did you mean 'given'" in out
    assert "1 passed" in out and "Traceback" not in out
