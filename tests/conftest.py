from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from night import AS_OF, Night, lose_contact, shipped_thresholds  # noqa: E402,F401  (re-exported for the test modules)

POLICIES = ROOT / "policies.yaml"


# The contact thresholds the tooling tests' hand-made nights are built on (their dates and counts sit on
# these edges): those tests run on a copy of policies.yaml pinned to them, whatever policies.yaml ships.
CONTACT_THRESHOLDS = {"contact_loss_unanswered_attempts": 3, "contact_loss_days_since_oldest": 7,
                      "contact_loss_attempts_by_project_success": 1, "at_risk_unanswered_attempts": 2}


def policies_with(path: Path, **thresholds: int) -> Path:
    """A copy of policies.yaml at `path` with the named thresholds set to these values."""
    text = POLICIES.read_text(encoding="utf-8")
    for name, value in thresholds.items():
        text, n = re.subn(rf"^(\s+{re.escape(name)}:\s*)-?\d+", rf"\g<1>{value}", text, count=1, flags=re.M)
        assert n == 1, f"policies.yaml has no threshold {name}"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def generated_nights(tmp_path_factory):
    """generated_nights(projects, seed, fmt) -> the directory of a generated export, made once per session
    for each size asked for (modules that share a size share the files; read them, never write into them)."""
    from processor.tools.generate.export import generate_export

    made: dict[tuple, Path] = {}

    def _night(projects: int = 3_000, seed: int = 11, fmt: str = "parquet") -> Path:
        if (projects, seed, fmt) not in made:
            directory = tmp_path_factory.mktemp(f"night-{projects}-{seed}-{fmt}") / "export"
            generate_export(directory, projects=projects, seed=seed, as_of=AS_OF, fmt=fmt)
            made[projects, seed, fmt] = directory
        return made[projects, seed, fmt]

    return _night


@pytest.fixture
def night():
    return Night()


@pytest.fixture
def decide(tmp_path):
    """Write a Night as a real export, run durable-rules on it through the library, return the decisions."""
    from processor.export.read import read_export
    from processor.run import decide_night
    from rules.document import load_policies

    counter = {"n": 0}

    def _decide(n: Night, policies: Path = POLICIES, fmt: str = "csv", as_of=AS_OF, workers: int = 0,
                prefilter: bool = True) -> pd.DataFrame:
        counter["n"] += 1
        export = read_export(n.write(tmp_path / f"export{counter['n']}", fmt))
        assert export.rejects.empty, export.rejects.to_dict("records")
        decisions, _ev, _facts = decide_night(load_policies(policies), export, as_of, workers=workers,
                                              prefilter=prefilter)
        return decisions

    return _decide


def actions(decisions: pd.DataFrame, policy_id: str | None = None) -> list[tuple]:
    """(policy, action, project, subject, milestone, assignee) tuples, for readable assertions."""
    d = decisions if policy_id is None else decisions[decisions["policy_id"] == policy_id]
    return [tuple(r) for r in d[["policy_id", "action", "project_id", "subject_id", "milestone_id",
                                 "assignee_id"]].itertuples(index=False)]


def fired(decisions: pd.DataFrame) -> set[str]:
    return set(decisions["policy_id"])
