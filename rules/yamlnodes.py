"""YAML with places: the policies file composed into nodes that carry their line and column, read
with YAML's safe subset only (no aliases, anchors, tags or timestamps, a bounded depth)."""
from __future__ import annotations

import yaml
from yaml.constructor import SafeConstructor

from rules.grammar import MAX_DEPTH, PolicyError, _shown
from rules.model import (
    Problem,
)


# --------------------------------------------------------------------------- YAML with places
class _Node:
    """A YAML value with its place; mappings keep their keys' places too."""

    __slots__ = ("value", "line", "col", "keys")

    def __init__(self, value, line, col, keys=None):
        self.value, self.line, self.col, self.keys = value, line, col, keys


_STANDARD_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")}
_SCALARS = SafeConstructor()


class _TooDeep(yaml.MarkedYAMLError):
    pass


def _without_timestamps(resolvers: dict) -> dict:
    # A date stays text, as in JSON and in editors: `id: 2026-11-24` is an id, not a date.
    return {first: [(tag, rx) for tag, rx in pairs if tag != "tag:yaml.org,2002:timestamp"]
            for first, pairs in resolvers.items()}


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, minus dates, with a depth limit, and with anchors and
    aliases refused (recorded as problems, never expanded: no billion laughs)."""

    yaml_implicit_resolvers = _without_timestamps(yaml.SafeLoader.yaml_implicit_resolvers)

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0
        self.refused: list[Problem] = []
        self.counts: dict[str, int] = {}
        self.first: dict[str, int] = {}

    def _refuse(self, what: str, mark, message: str):
        # The first of each, with how many more: one sentence, not one per alias of a billion laughs.
        self.counts[what] = self.counts.get(what, 0) + 1
        if what not in self.first:
            self.first[what] = len(self.refused)
            self.refused.append(Problem(mark.line + 1, mark.column + 1, message, beyond_schema=True))
        else:
            p = self.refused[self.first[what]]
            more = self.counts[what] - 1
            base = p.message.split(" (and ")[0]
            self.refused[self.first[what]] = Problem(p.line, p.col, f"{base} (and {more} more below)", True)

    def compose_node(self, parent, index):
        event = self.peek_event()
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            self.get_event()
            self._refuse("alias", mark, f"'*{event.anchor}' repeats another part of the file — aliases are not used "
                                        f"in a policies file: write the value out")
            return yaml.ScalarNode("tag:yaml.org,2002:null", "", mark, event.end_mark)
        if getattr(event, "anchor", None):
            self._refuse("anchor", mark, f"'&{event.anchor}' names a part of the file for reuse — anchors are not "
                                         f"used in a policies file: remove it")
            event.anchor = None
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _TooDeep(None, None, f"blocks are nested more than {MAX_DEPTH} levels deep here — a policies "
                                           f"file needs a few; check the indentation", mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _PlainLoader(_Loader):
    """The document as plain data, read the way the checker reads it: dates stay text, and what
    the checker refuses before checking (aliases, anchors, odd tags, deep nesting) raises here."""

    def compose_node(self, parent, index):
        node = super().compose_node(parent, index)
        if self.refused:
            p = self.refused[0]
            raise yaml.composer.ComposerError(None, None, f"line {p.line}: {p.message}", None)
        if node.tag not in _STANDARD_TAGS:
            raise yaml.composer.ComposerError(None, None, f"the YAML tag '{node.tag}' is not used in a policies file",
                                              node.start_mark)
        return node


def _to_nodes(node: yaml.Node, problems: list[Problem]) -> _Node:
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    if node.tag not in _STANDARD_TAGS:
        problems.append(Problem(line, col, f"the YAML tag '{node.tag}' is not used in a policies file — remove it",
                                beyond_schema=True))
        return _Node(None, line, col)
    if isinstance(node, yaml.MappingNode):
        values: dict[str, _Node] = {}
        keys: dict[str, _Node] = {}
        for knode, vnode in node.value:
            key = _to_nodes(knode, problems)
            if not isinstance(key.value, str):
                problems.append(Problem(key.line, key.col, f"{_shown(key.value)} cannot be a key here — keys are "
                                                           f"words such as 'id' or 'when'"))
                continue
            if key.value in values:
                first = keys[key.value]
                problems.append(Problem(key.line, key.col, f"'{key.value}' is written twice in the same block (first "
                                                           f"on line {first.line}) — keep one",
                                        beyond_schema=True))
            values[key.value] = _to_nodes(vnode, problems)
            keys[key.value] = key
        return _Node(values, line, col, keys)
    if isinstance(node, yaml.SequenceNode):
        return _Node([_to_nodes(n, problems) for n in node.value], line, col)
    if not isinstance(node, yaml.ScalarNode):  # pragma: no cover - PyYAML has no other node
        return _Node(None, line, col)
    try:
        value = _SCALARS.yaml_constructors[node.tag](_SCALARS, node)
    except (ValueError, yaml.YAMLError):
        problems.append(Problem(line, col, f"'{node.value}' is not a {node.tag.rsplit(':', 1)[-1]} — remove the tag "
                                           f"or fix the value", beyond_schema=True))
        value = None
    return _Node(value, line, col)


def _plain(n: _Node):
    if isinstance(n.value, dict):
        return {k: _plain(v) for k, v in n.value.items()}
    if isinstance(n.value, list):
        return [_plain(v) for v in n.value]
    return n.value


def _compose(text: str, filename: str) -> tuple[_Node | None, list[Problem]]:
    """The document's nodes, or None when there is none; YAML that cannot be read raises PolicyError."""
    problems: list[Problem] = []
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as e:
        raise PolicyError(filename, [_unreadable_character(text, e)]) from None
    try:
        docs = []
        while loader.check_node():
            docs.append(loader.get_node())
            if len(docs) > 1:
                mark = docs[1].start_mark
                problems.append(Problem(mark.line + 1, 1, "a second YAML document ('---') starts here — keep one "
                                                          "document per file"))
                break
    except _TooDeep as e:
        mark = e.problem_mark
        raise PolicyError(filename, [Problem(mark.line + 1, mark.column + 1, e.problem, beyond_schema=True)]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise PolicyError(filename, [Problem(mark.line + 1 if mark else 1, mark.column + 1 if mark else 1,
                                             _yaml_sentence(e))]) from None
    except yaml.reader.ReaderError as e:
        raise PolicyError(filename, [_unreadable_character(text, e)]) from None
    except yaml.YAMLError as e:
        raise PolicyError(filename, [Problem(1, 1, f"this is not valid YAML: {e}")]) from None
    except RecursionError:  # pragma: no cover - MAX_DEPTH stops this first
        raise PolicyError(filename, [Problem(1, 1, "blocks are nested too deeply — check the indentation")]) from None
    finally:
        loader.dispose()
    problems.extend(loader.refused)
    if not docs:
        return None, problems
    return _to_nodes(docs[0], problems), problems


def _unreadable_character(text: str, e: yaml.reader.ReaderError) -> Problem:
    position = max(0, min(e.position, len(text)))
    line = text.count("\n", 0, position) + 1
    col = position - (text.rfind("\n", 0, position) + 1) + 1
    return Problem(line, col, f"the control character U+{e.character:04X} cannot be in a policies file — delete it "
                              f"(it is invisible in most editors)")


def _yaml_sentence(e: yaml.MarkedYAMLError) -> str:
    what = (e.problem or "not valid YAML").strip()
    context = (e.context or "").strip()
    if "\\t" in what or "\t" in what or "tab" in what:
        return "this is not valid YAML: a tab is used for indentation — indent with spaces"
    if "<stream end>" in what and "flow" in context and e.context_mark is not None:
        opened = "[" if "sequence" in context else "{"
        return f"this is not valid YAML: the '{opened}' opened on line {e.context_mark.line + 1} is never closed"
    if "mapping values are not allowed" in what:
        return ("this is not valid YAML: a ':' where a new 'key: value' cannot start — check the indentation of this "
                "line "
                "against the line above, or put quotes around a text containing ': '")
    if "expected <block end>" in what or "expected <block end>" in context:
        return ("this is not valid YAML: this line is indented differently from the lines of its block — line it up "
                "with them")
    if "could not find expected ':'" in what:
        return "this is not valid YAML: a line here is missing the ':' after its key, or a quote is not closed"
    if "found character" in what and "cannot start any token" in what:
        return f"this is not valid YAML: {what} — put quotes around the value"
    hint = " — check the indentation (spaces, not tabs) and the ':' after each key" if any(
        w in what for w in ("indent", "mapping", "expected")) else ""
    return f"this is not valid YAML: {what}{hint}"


def _text_keys(v):
    if isinstance(v, dict):
        return {k if isinstance(k, str) else f"{k!r} (not text)": _text_keys(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_text_keys(x) for x in v]
    return v
