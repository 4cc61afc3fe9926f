"""The policies document: read `policies.yaml`, check every part of it, and
build the policy model (rules.model) the compiler and the engine use. The
engine's limits are checked on the compiled rules (rules.compile).

Every problem is reported with its place in the file (line and column, both
1-based) and what was expected, all of them in one pass: a policy editor fixes
a file once, not once per error.

The JSON Schema of the same document (rules.schema) is built from the same
vocabulary and the same per-action rules (rules.grammar's `allowed_who` and
`action_arguments`, the vocabulary's `KNOWN_TEXT`), so the editor's checks and this checker say
the same thing. The YAML is read with places by rules.yamlnodes and checked by
rules.checker. The few checks a JSON Schema cannot express (a name used
before it is defined, two policies with one id, a key written twice) are
marked `beyond_schema` on their Problem; the tests hold the two to that.
"""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import yaml

from rules.checker import _MISPLACED_AT_TOP, _Checker, _is_whole, _policy, _unused, engine_size
from rules.grammar import (
    MAX_ENGINE_TESTS,
    MAX_FILE_BYTES,
    REQUIRED_TOP_LEVEL_KEYS,
    SUPPORTED_VERSION,
    TOP_LEVEL_KEYS,
    PolicyError,
    _kind,
    _shown,
)
from rules.model import (
    Policy,
    PolicySet,
    Problem,
)
from rules.yamlnodes import _compose, _PlainLoader, _text_keys


def parse_policies(text: str, filename: str = "policies.yaml") -> PolicySet:
    """Check a policies document given as text; raise PolicyError listing every problem."""
    if len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        raise PolicyError(filename, [Problem(1, 1, f"the file is larger than {MAX_FILE_BYTES // 1_000_000} MB — a "
                                                   f"policies file is a few hundred lines; is this the right file?",
                                             beyond_schema=True)])
    root, problems = _compose(text, filename)
    if root is None:
        raise PolicyError(filename, problems or [Problem(1, 1, "the file is empty — it must hold 'version', "
                                                               "'thresholds' and 'policies'")])
    ck = _Checker(problems)
    if isinstance(root.value, str):
        ck.bad(root, f"this is not a policies file: it reads as plain text ({_shown(root.value)}), not as 'key: "
                     f"value' lines — "
                     f"it must hold 'version', 'thresholds' and 'policies'")
        raise PolicyError(filename, ck.problems)
    top = ck.mapping(root, "the policies file", TOP_LEVEL_KEYS, required=REQUIRED_TOP_LEVEL_KEYS,
                     misplaced=_MISPLACED_AT_TOP)
    if top is None:
        raise PolicyError(filename, ck.problems)
    version = top.get("version")
    if version is not None and (not _is_whole(version.value) or version.value != SUPPORTED_VERSION):
        ck.bad(version, f"'version' must be {SUPPORTED_VERSION}, got {_shown(version.value)}")
    thresholds = ck.thresholds(top.get("thresholds"))
    named = ck.named_conditions(top["conditions"], thresholds) if "conditions" in top else {}
    policies: list[Policy] = []
    pnode = top.get("policies")
    if pnode is not None:
        if not isinstance(pnode.value, list) or not pnode.value:
            what = "it is empty" if isinstance(pnode.value,
                                               list) or pnode.value is None else f"got {_kind(pnode.value)}"
            ck.bad(pnode, f"'policies' must be a list of policies (each starting with '- id:'), {what}")
        else:
            seen: dict[str, int] = {}
            for item in pnode.value:
                policy = _policy(ck, item, thresholds, named, seen)
                if policy is not None:
                    policies.append(policy)
    tests = sum(engine_size(p)[1] for p in policies)
    if tests > MAX_ENGINE_TESTS and pnode is not None:
        ck.bad(pnode, f"the policies make {tests} tests in all, the rules engine holds at most {MAX_ENGINE_TESTS} — "
                      "a policies file is a few dozen policies; remove some, or merge tests into one_of lists",
                      beyond_schema=True)
    if ck.problems:
        raise PolicyError(filename, ck.problems)
    notes = _unused(top, thresholds, named, policies, ck.referenced)
    return PolicySet(filename, hashlib.sha256(text.encode()).hexdigest(), SUPPORTED_VERSION, thresholds, policies,
                     named, notes)


def read_text(path: str | Path) -> str:
    """A policies-like file's text; PolicyError (located at 1:1 or at the bad byte) when it cannot be read as UTF-8."""
    path = Path(path)
    name = str(path)
    try:
        # Without blocking, so that a FIFO is named rather than waited on; never more than the limit + 1 bytes.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            if stat.S_ISDIR(mode):
                raise IsADirectoryError
            kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) \
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
            raise PolicyError(name, [Problem(1, 1, f"this is {kind}, not a file — give the policies file itself, e.g. "
                                                   f"policies.yaml")])
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError(name, [Problem(1, 1, "no such file — give the policies file with --policies, or run from "
                                               "the directory holding policies.yaml")]) from None
    except IsADirectoryError:
        raise PolicyError(name, [Problem(1, 1, "this is a directory — give the policies file itself, "
                                               "e.g. policies.yaml")]) from None
    except OSError as e:
        raise PolicyError(name, [Problem(1, 1, f"cannot be read: {e.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise PolicyError(name, [Problem(1, 1, f"the file is larger than {MAX_FILE_BYTES // 1_000_000} MB — a "
                                               f"policies file is a few hundred lines; is this the right file?",
                                         beyond_schema=True)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise PolicyError(name, [Problem(line, col, "this is not UTF-8 text — save the file as UTF-8")]) from None
    return text[1:] if text.startswith("\ufeff") else text


def load_policies(path: str | Path) -> PolicySet:
    """Read and check a policies file; PolicyError names every problem."""
    return parse_policies(read_text(path), str(path))


def located_yaml(text: str, filename: str):
    """A YAML document as nodes carrying line and column (value, line, col, keys), for other
    located checkers (the policy test cases); None for an empty document. Raises PolicyError."""
    root, problems = _compose(text, filename)
    if problems:
        raise PolicyError(filename, problems)
    return root


def plain_document(text: str):
    """The document as plain Python values, as the checker reads them (for the JSON Schema check).

    Mapping keys become text, as in JSON (a key that is not text in YAML becomes one no schema
    allows). Raises yaml.YAMLError when the checker would refuse to read the text at all: not YAML,
    several documents, aliases, anchors, tags, nesting deeper than MAX_DEPTH; ValueError when it
    is larger than MAX_FILE_BYTES."""
    if len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    return _text_keys(yaml.load(text, Loader=_PlainLoader))
