"""The JSON Schema of policies.yaml, built from rules.vocabulary and the same
per-action rules the checker uses (rules.document), so the two cannot drift.

Editors that understand `# yaml-language-server: $schema=...` complete and
check the file while it is typed. The schema is strict: an unknown key is an
error. What it cannot express (a threshold or named condition used but not
defined, two policies with one id, a key written twice) the checker still
reports; those problems are marked `beyond_schema`.

`policy_schema()` is the schema as a dict; `schema_text()` is what
`shakers-rules schema` prints and what rules/policies.schema.json holds;
`vocabulary_markdown()` is the policy editor's guide's vocabulary tables.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from rules.grammar import (
    MAX_NUMBER,
    NAME_PATTERN,
    POLICY_ID_PATTERN,
    POLICY_KEYS,
    REQUIRED_POLICY_KEYS,
    REQUIRED_THRESHOLDS,
    REQUIRED_TOP_LEVEL_KEYS,
    SUPPORTED_VERSION,
    TEXT_PATTERN,
    TOP_LEVEL_KEYS,
    action_arguments,
    all_fields,
    allowed_who,
)
from rules.vocabulary import (
    ACTION_ARGS,
    ACTIONS,
    DEFAULT_WHO,
    FACT_KINDS,
    FLAG,
    HOLD_REASONS,
    KNOWN_TEXT,
    MILESTONE_STATUSES,
    NUMBER,
    OPERATORS,
    Action,
)

SCHEMA_FILE = Path(__file__).with_name("policies.schema.json")
SCHEMA_ID = "https://shakers.example/schemas/policies.schema.json"

_WORD_OPS = {o.word: f"holds when the fact is {o.explain} this number ({o.symbol})"
             for o in OPERATORS.values() if o.ordered}
_ACTION_SENTENCES: dict[str, str] = {
    Action.HALT_PROJECT: "put the project on hold, with a reason",
    Action.REQUEST_TALENT_DECISION: "ask the talent to decide: wait for the client or close their work",
    Action.RELEASE_MILESTONE_PAYMENT: "release a milestone's money held in escrow to its payee",
    Action.CLOSE_PROJECT: "close the project",
    Action.NOTIFY_CLIENT: "tell the client what happened",
    Action.NOTIFY_TALENT: "tell the talent what happened",
    Action.REJECT_USER: "reject a user from the platform",
    Action.ASSIGN_TOP_SHAKER: "give the project to the best eligible Top Shaker",
    Action.REASSIGN_MILESTONE: "make the Top Shaker the payee of the project's milestones",
    Action.NOTIFY_TALENT_NON_PAYMENT: "tell the talent an invoice is unpaid (amount, days overdue)",
    Action.RESUME_PROJECT: "take the project off hold",
    Action.FLAG_FOR_REVIEW: "ask Project Success to look, with a reason",
}
_WHO_SENTENCES = {
    "client": "the project's client",
    "talent": "the project's talent",
    "project_success": "the project's Project Success manager",
    "payee": "the milestone's payee",
    "party": "the person the fact is about (policies about a party)",
    "nobody": "no one in particular (the project)",
}


# --------------------------------------------------------------------------- the schema
def _ref(name: str) -> dict:
    return {"$ref": f"#/definitions/{name}"}


def _number() -> dict:
    return {"anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_NUMBER},
                      _ref("threshold_name")],
            "description": "a whole number ≥ 0, or the name of a threshold"}


def _field_value(fieldname: str, ftype: str) -> dict:
    """What a single value of `fieldname` may be."""
    if ftype == NUMBER:
        return _ref("number")
    if ftype == FLAG:
        return {"type": "boolean"}
    known = KNOWN_TEXT.get(fieldname)
    if known:
        values: list = [v for v in known]
        if "none" in known:
            values.append(None)  # an empty value means none
        return {"enum": values}
    return {"type": ["string", "number", "boolean", "null"]}


def _field_test(fieldname: str, ftype: str) -> dict:
    single = _field_value(fieldname, ftype)
    words: dict = {
        "one_of": {"type": "array", "minItems": 1, "items": single,
                   "description": "holds when the fact is one of these"},
        "none_of": {"type": "array", "minItems": 1, "items": single,
                    "description": "holds when the fact is none of these"},
        "not": {**single, "description": "holds when the fact is not this"},
    }
    if ftype == NUMBER:
        words = {**{w: {"description": d, "allOf": [_ref("number")]} for w, d in _WORD_OPS.items()}, **words}
    comparison = {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
                  "properties": words}
    return {"anyOf": [single, comparison]}


def _test_definition(fieldname: str, ftype: str) -> str:
    if fieldname in KNOWN_TEXT:
        return f"test_{fieldname}"
    return {NUMBER: "test_number", FLAG: "test_flag"}.get(ftype, "test_text")


def _condition(fields: dict[str, tuple[str, str]], list_name: str) -> dict:
    return {
        "anyOf": [
            {"type": "string", "pattern": NAME_PATTERN,
             "description": "the name of a condition defined under 'conditions'"},
            {
                "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
                "properties": {
                    "any": {"type": "array", "minItems": 1, "items": {"$ref": f"#/definitions/{list_name}_item"},
                            "description": "holds when at least one of these conditions holds"},
                    "not": {"$ref": f"#/definitions/{list_name}_item",
                            "description": "holds when this condition does not"},
                    **{name: {"description": f"{desc} ({ftype})", "allOf": [_ref(_test_definition(name, ftype))]}
                       for name, (ftype, desc) in fields.items()},
                },
            },
        ],
    }


def _condition_list(list_name: str) -> dict:
    item = _ref(f"{list_name}_item")
    # A single condition written without the dash is forgiven (as the checker does).
    return {"anyOf": [{"type": "array", "minItems": 1, "items": item}, {"type": "object", "allOf": [item]}],
            "description": "conditions that must all hold, one per line starting with '- '"}


def _argument(action: str, name: str, vkind: str, kind: str | None, description: str) -> dict:
    if name == "who":
        return {"enum": list(allowed_who(action, kind)), "description": description}
    if vkind == "hold reason":
        return {"enum": list(HOLD_REASONS), "description": description}
    if vkind == "milestone statuses":
        status = {"enum": list(MILESTONE_STATUSES)}
        return {"anyOf": [status, {"type": "array", "minItems": 1, "items": status}], "description": description}
    return {"type": "string", "pattern": TEXT_PATTERN, "description": description}


def _actions(kind: str | None) -> dict:
    items: list[dict[str, object]] = []
    for action in ACTIONS:
        args, required = action_arguments(action, kind)
        sentence = _ACTION_SENTENCES.get(action, action)
        if not required:
            items.append({"const": action, "description": sentence})
        arguments = {"type": "object", "additionalProperties": False, "required": list(required),
                     "properties": {name: _argument(action, name, vkind, kind, desc)
                                    for name, (vkind, desc) in args.items()}}
        value = arguments if required else {"anyOf": [arguments, {"type": "null"}]}
        items.append({"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
                      "required": [action], "properties": {action: {**value, "description": sentence}}})
    return {"type": "array", "minItems": 1, "items": {"anyOf": items},
            "description": "the actions to take when every condition holds, one per line starting with '- '"}


def _policy() -> dict:
    kinds = list(FACT_KINDS)
    base_properties = {
        "id": {"type": "string", "pattern": POLICY_ID_PATTERN,
               "description": "a short unique name, such as client-contact-loss (decisions carry it)"},
        "description": {"type": "string", "description": "a sentence saying what the policy is for"},
        "about": {"enum": kinds, "description": "which facts the policy reads: " + ", ".join(kinds)},
        "when": {"description": "conditions that must all hold"},
        "then": {"description": "the actions it calls for"},
    }
    assert list(base_properties) == list(POLICY_KEYS)
    per_kind = [
        {"if": {"required": ["about"], "properties": {"about": {"const": kind}}},
         "then": {"properties": {"when": _ref(f"when_{kind}"), "then": _ref(f"then_{kind}")}}}
        for kind in kinds
    ]
    return {"type": "object", "additionalProperties": False, "required": list(REQUIRED_POLICY_KEYS),
            "properties": base_properties, "allOf": per_kind}


def policy_schema() -> dict:
    """The JSON Schema (draft-07) of a policies document."""
    definitions: dict = {
        "threshold_name": {"type": "string", "pattern": NAME_PATTERN, "description": "the name of a threshold"},
        "number": _number(),
        "policy": _policy(),
        # Fields whose values are alike share one definition: numbers, yes/no, free text.
        "test_number": _field_test("", NUMBER),
        "test_flag": _field_test("", FLAG),
        "test_text": _field_test("", "text"),
        **{f"test_{name}": _field_test(name, ftype)
           for name, (ftype, _desc) in all_fields().items() if name in KNOWN_TEXT},
        "conditions_item": _condition(all_fields(), "conditions"),
        "conditions_list": _condition_list("conditions"),
    }
    for kind, fields in FACT_KINDS.items():
        definitions[f"when_{kind}_item"] = _condition(fields, f"when_{kind}")
        definitions[f"when_{kind}"] = _condition_list(f"when_{kind}")
        definitions[f"then_{kind}"] = _actions(kind)
    thresholds = {
        "type": "object",
        "description": "every number the policies use, by name",
        "propertyNames": {"pattern": NAME_PATTERN},
        "additionalProperties": {"type": "integer", "minimum": 0, "maximum": MAX_NUMBER},
        "required": list(REQUIRED_THRESHOLDS),
    }
    properties = {
        "version": {"const": SUPPORTED_VERSION, "description": f"the format of this file: {SUPPORTED_VERSION}"},
        "thresholds": thresholds,
        "conditions": {"type": "object", "propertyNames": {"pattern": NAME_PATTERN},
                       "additionalProperties": _ref("conditions_list"),
                       "description": "named groups of conditions that several policies use"},
        "policies": {"type": "array", "minItems": 1, "items": _ref("policy"),
                     "description": "the policies, each starting with '- id:'"},
    }
    assert list(properties) == list(TOP_LEVEL_KEYS)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": SCHEMA_ID,
        "title": "shakers-rules policies",
        "description": "The marketplace's policies, evaluated every night by shakers-rules (docs/policies.md).",
        "type": "object",
        "additionalProperties": False,
        "required": list(REQUIRED_TOP_LEVEL_KEYS),
        "properties": properties,
        "definitions": definitions,
    }


def schema_text() -> str:
    """The schema as the committed rules/policies.schema.json holds it."""
    return json.dumps(policy_schema(), indent=2, ensure_ascii=False) + "\n"


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    return jsonschema.Draft7Validator(policy_schema())


def schema_errors(document) -> list[str]:
    """What the JSON Schema says about a plain document: '' path: message, one per error."""
    validator = _validator()
    out = []
    for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        out.append(f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}")
    return out


# --------------------------------------------------------------------------- the guide's tables
def vocabulary_markdown() -> str:
    """The vocabulary of facts and actions as Markdown tables (docs/policies.md pastes this)."""
    lines = ["<!-- generated by `shakers-rules schema --markdown` from rules/vocabulary.py: "
             "do not edit by hand -->", ""]
    common = None
    for kind, fields in FACT_KINDS.items():
        if common is None:
            common = set(fields)
        else:
            common &= set(fields)
    common_fields = [f for f in next(iter(FACT_KINDS.values())) if f in (common or set())]
    lines += ["### Facts every policy can test", "",
              "Whatever a policy is `about`, its facts carry the project's own fields:", "",
              "| fact | kind | meaning | values |", "|---|---|---|---|"]
    first = next(iter(FACT_KINDS.values()))
    for name in common_fields:
        ftype, desc = first[name]
        lines.append(f"| `{name}` | {ftype} | {desc} | {_values(name, ftype)} |")
    for kind, fields in FACT_KINDS.items():
        own = [(n, spec) for n, spec in fields.items() if n not in common_fields]
        lines += ["", f"### `about: {kind}`", "", _KIND_SENTENCES.get(kind, ""), "",
                  "| fact | kind | meaning | values |", "|---|---|---|---|"]
        for name, (ftype, desc) in own:
            lines.append(f"| `{name}` | {ftype} | {desc} | {_values(name, ftype)} |")
    lines += ["", "### Comparisons", "",
              "| write | holds when |", "|---|---|",
              "| `field: value` | the fact equals the value |",
              *[f"| `field: {{{w}: N}}` | {d.replace('holds when ', '')} (N a number or a threshold name) |"
                for w, d in _WORD_OPS.items()],
              "| `field: {one_of: [a, b]}` | the fact is one of the values |",
              "| `field: {none_of: [a, b]}` | the fact is none of the values |",
              "| `field: {not: value}` | the fact is not the value |",
              "| `- any:` + a list | at least one of the listed conditions holds |",
              "| `- not: condition` | the condition (a test or a named condition) does not hold |",
              "| `- name` | the named condition under `conditions:` holds |"]
    lines += ["", "### Actions", "",
              "| action | what it asks for | concerns (default) | arguments |", "|---|---|---|---|"]
    for action in ACTIONS:
        args = ACTION_ARGS[action]
        shown = "; ".join(f"`{a}`{' (required)' if req else ''}: {desc}"
                          for a, (_k, req, desc) in args.items()) or "none"
        lines.append(f"| `{action}` | {_ACTION_SENTENCES.get(action, '')} | {DEFAULT_WHO[action]} | {shown} |")
    lines += ["", "`who` (in `flag_for_review`, `reject_user`) is one of:", "",
              "| who | the decision's subject |", "|---|---|",
              *[f"| `{w}` | {s} |" for w, s in _WHO_SENTENCES.items()]]
    return "\n".join(lines) + "\n"


_KIND_SENTENCES = {
    "project": "One fact per project.",
    "party": "Two facts per project: one for its client, one for its talent.",
    "milestone": "One fact per milestone.",
    "invoice": "One fact per invoice.",
}


def _values(name: str, ftype: str) -> str:
    if name in KNOWN_TEXT:
        return ", ".join(f"`{v}`" for v in KNOWN_TEXT[name])
    if ftype == FLAG:
        return "`true`, `false`"
    if ftype == NUMBER:
        return "whole number"
    return "any text"
