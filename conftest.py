"""Collects policy_tests/*.yaml: each policy case is a pytest item named after it
(`policy_tests/escrow.yaml::<case name>`); a failure shows the case's differences."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
POLICIES = ROOT / "policies.yaml"


# ---------------------------------------------------------------- policy cases as pytest items
# policy_tests/*.yaml is the one home of policy sentences; each case becomes an item named after it,
# run through the same library `shakers-rules test` uses, so pytest and the command cannot disagree.
CASES_DIR = ROOT / "policy_tests"




def pytest_collect_file(parent, file_path):
    if file_path.suffix in (".yaml", ".yml") and file_path.parent == CASES_DIR:
        return PolicyCaseFile.from_parent(parent, path=file_path)
    return None


class PolicyCaseFile(pytest.File):
    def collect(self):
        from processor.tools import cases as case_files

        try:
            cases = case_files.load_cases(self.path.relative_to(ROOT))
        except case_files.CaseFileError as e:  # an unreadable case file is one failed item, its problems located
            yield PolicyCaseItem.from_parent(self, name="(the case file)", case=None,
                                             problems=[p.located(e.filename) for p in e.problems])
            return
        for case in cases:
            yield PolicyCaseItem.from_parent(self, name=case.name, case=case, problems=[])


class PolicyCaseFailed(Exception):
    pass


_POLICIES_LOADED: dict = {}


def _shipped_policies():
    if "set" not in _POLICIES_LOADED:  # read once per session: every case runs against the same file
        from rules.document import load_policies
        _POLICIES_LOADED["set"] = load_policies(POLICIES)
    return _POLICIES_LOADED["set"]


class PolicyCaseItem(pytest.Item):
    def __init__(self, *, case, problems, **kwargs):
        super().__init__(**kwargs)
        self.case = case
        self.problems = problems

    def runtest(self):
        if self.case is None:
            raise PolicyCaseFailed(self.problems)
        import functools
        import tempfile

        from processor.tools import policytest

        policies = _shipped_policies()
        with tempfile.TemporaryDirectory(prefix="shakers-policy-case-") as tmp:
            decisions, refused, facts = policytest._decide_case(policies, self.case, Path(tmp) / "case")
        why = None if facts is None else functools.partial(policytest.why_not, policies, facts)
        differences = policytest.check_case(self.case, decisions, refused, why)
        if differences:
            raise PolicyCaseFailed(differences)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, PolicyCaseFailed):
            where = f"{self.case.file}:{self.case.line}" if self.case else str(self.path)
            return "\n".join([f"{where}: {self.name}", *excinfo.value.args[0]])
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, (self.case.line - 1 if self.case else 0), f"policy case: {self.name}"
