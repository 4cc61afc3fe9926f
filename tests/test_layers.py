"""The layers: `rules/` is pure (it knows policies, not data frames, databases or the processor),
its modules import one another one way only, and every evaluator reads its one operator table."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
FORBIDDEN = ("pandas", "numpy", "pyarrow", "sqlite3", "duckdb", "processor")


def _rules_modules() -> list[str]:
    return sorted(f"rules.{p.stem}" for p in RULES.glob("*.py") if p.stem != "__init__")


def _imports_of(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_importing_every_rules_module_loads_no_data_library_database_or_processor():
    # A fresh interpreter: what this test process already imported cannot hide an import.
    code = (
        "import importlib, json, sys\n"
        f"for name in {_rules_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_no_rules_module_names_a_data_library_database_or_processor_even_inside_a_function():
    for name in _rules_modules():
        path = RULES / f"{name.split('.')[1]}.py"
        named = sorted(m for m in _imports_of(path) if m.split(".")[0] in FORBIDDEN)
        assert named == [], f"{path.relative_to(ROOT)} imports {named}"


def test_the_rules_modules_import_one_another_without_a_cycle():
    modules = _rules_modules()
    graph = {name: sorted(m for m in _imports_of(RULES / f"{name.split('.')[1]}.py") if m in modules and m != name)
             for name in modules}
    assert graph["rules.document"], "the walk found no imports among rules/ modules: it would prove nothing"
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, "import cycle: " + " -> ".join((*path[path.index(name):], name))
        if name in done:
            return
        for imported in graph[name]:
            visit(imported, (*path, name))
        done.add(name)

    for name in modules:
        visit(name, ())


def test_each_comparison_and_its_negation_never_hold_together_on_a_present_value():
    from rules.model import Comparison
    from rules.vocabulary import OPERATORS

    for op, operator in OPERATORS.items():
        assert OPERATORS[operator.negation].negation == op, f"{op}: the negation of its negation is not itself"
        value = ("a", "b") if operator.members else 3
        for actual in ("a", "b", "c", 2, 3, 4):
            if operator.ordered and isinstance(actual, str):
                continue  # numbers only: the checker refuses a number comparison of text
            comparison = Comparison("f", op, value)
            assert comparison.holds(actual) != comparison.negated().holds(actual), (op, actual)


def test_every_comparison_word_holds_on_the_same_values_in_durable_rules_the_sql_and_explain():
    import pandas as pd

    from processor.engine.prefilter import any_masks
    from rules.compile import explain_fact, to_ruleset
    from rules.document import parse_policies
    from rules.engine import PolicyEngine
    from rules.vocabulary import BY_WORD

    policies = "".join(
        f"  - id: p-{word}\n    about: project\n    when:\n"
        f"      - most_days_overdue: {{{word}: {'[2, 3]' if operator.members else '2'}}}\n    then: [close_project]\n"
        for word, operator in BY_WORD.items())
    head = "version: 1\nthresholds: {top_shaker_default_max_active_projects: 3}\npolicies:\n"
    policy_set = parse_policies(head + policies)
    values = [0, 1, 2, 3, 4]
    facts = [{"id": f"project:P{v}", "kind": "project", "most_days_overdue": v} for v in values]
    fired = set(PolicyEngine(to_ruleset(policy_set)).evaluate(facts))
    frame = pd.DataFrame({"most_days_overdue": values})
    for policy in policy_set.policies:
        by_engine = [(policy.id, fact["id"]) in fired for fact in facts]
        by_sql = any_masks([policy], {"project": frame})["project"].tolist()
        by_explain = [explain_fact(policy, fact)[0] for fact in facts]
        assert by_engine == by_sql == by_explain, (policy.id, by_engine, by_sql, by_explain)
        assert any(by_engine) and not all(by_engine), f"{policy.id}: the values chosen do not tell the evaluators apart"


# --------------------------------------------------------------------------- the processor's layers
PROCESSOR = ROOT / "processor"
# (which modules, what they may not import, why)
LAYERS = (
    ("processor.delivery", ("processor.run", "processor.ledger", "processor.reports", "processor.nightly",
                            "processor.cli"),
     "delivery sends what it is given; the run records it"),
    ("processor.export", ("processor.engine", "processor.reports", "processor.delivery", "processor.run",
                          "processor.ledger",
                          "processor.nightly", "processor.tools"),
     "reading and checking the export comes first: it knows nothing of what is done with the rows"),
    ("processor.engine", ("processor.reports", "processor.delivery", "processor.run", "processor.ledger",
                          "processor.nightly",
                          "processor.tools"),
     "the engine turns facts into decisions; what becomes of them is the run's business"),
    ("processor", ("processor.cli",), "the CLI is a shell over the library: nothing below it imports it"),
    ("processor.cli", ("processor.cli.main",), "a command module never imports the group; the group imports the "
                                               "commands"),
)


# Where a rule does not look: the CLI may import its own modules, and the group (main, `python -m`) imports the
# commands.
EXEMPT = {"processor": ("processor.cli",), "processor.cli": ("processor.cli.main", "processor.cli.__main__")}


def _exempt(name: str, package: str) -> bool:
    return any(name == e or name.startswith(e + ".") for e in EXEMPT.get(package, ()))


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _breaches(paths: list[Path]) -> list[str]:
    """`module imports forbidden (why)` for every import that crosses a layer the wrong way."""
    found = []
    for path in paths:
        name = _module_name(path)
        for package, forbidden, why in LAYERS:
            if not (name == package or name.startswith(package + ".")) or _exempt(name, package):
                continue
            for imported in sorted(_imports_of(path)):
                if any(imported == f or imported.startswith(f + ".") or imported.startswith(f + "_")
                       for f in forbidden):
                    found.append(f"{name} imports {imported} ({why})")
    return found


def test_the_processor_imports_down_its_layers_only():
    assert _breaches(sorted(PROCESSOR.rglob("*.py"))) == []


def test_the_layer_check_sees_delivery_reaching_up_a_library_module_importing_the_cli_and_a_command_the_group(
        tmp_path, monkeypatch):
    fake_root = tmp_path
    (fake_root / "processor" / "delivery").mkdir(parents=True)
    (fake_root / "processor" / "delivery" / "smtp.py").write_text("def f():\n    from processor.ledger import Ledger\n")
    (fake_root / "processor" / "run.py").write_text("from processor.cli.nightly import nightly\n")
    (fake_root / "processor" / "cli").mkdir()
    (fake_root / "processor" / "cli" / "policy.py").write_text("from processor.cli import main\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    got = _breaches(sorted((fake_root / "processor").rglob("*.py")))
    assert got == ["processor.cli.policy imports processor.cli.main (a command module never imports the group; the "
                   "group imports the commands)",
                   "processor.delivery.smtp imports processor.ledger (delivery sends what it is given; the run "
                   "records it)",
                   "processor.delivery.smtp imports processor.ledger.Ledger (delivery sends what it is given; "
                   "the run records it)",
                   "processor.run imports processor.cli.nightly (the CLI is a shell over the library: nothing below "
                   "it imports it)",
                   "processor.run imports processor.cli.nightly.nightly (the CLI is a shell over the library: nothing "
                   "below it imports it)"]
