"""Reading spec files: YAML with line numbers, then the schema, then the checks.

PyYAML's composer gives a node tree that knows where every node starts; the Python values are
built from it here, keeping a map from each field path (``("tunables", "parallel")``,
``("signature", "inputs", 0, "shape", 1)``) to its line. That map turns every problem — bad YAML,
a field the schema rejects, a dimension nobody binds — into ``path:line: field: message``.

The YAML accepted is plain data: mappings with string keys (no duplicates), lists, strings,
numbers, booleans and null. Anchors, aliases, merge keys and tags other than the standard ones
are rejected: a spec should read the same to a person as to the loader. Like YAML 1.2 (and unlike
PyYAML's YAML 1.1), ``1e-6`` is a number.
"""

from __future__ import annotations

import hashlib
import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from koschei.errors import SpecIssue
from koschei.specs.schema import Spec

FieldPath = tuple[str | int, ...]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_TAG}{name}" for name in ("str", "int", "float", "bool", "null")}
# YAML 1.2 floats that YAML 1.1 leaves as strings: 1e-6, 5E3, 1.0e6 (no dot or sign needed).
_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?(\.\d+|\d[\d_]*(\.\d*)?)[eE][-+]?\d+$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_constructor = yaml.constructor.SafeConstructor()


@dataclass(frozen=True, eq=False)
class LoadedSpec:
    """One spec file, validated: the model, where it came from, and where each field is."""

    spec: Spec
    path: Path
    relpath: str  # workspace-relative, POSIX form
    sha256: str  # of the file's bytes
    lines: Mapping[FieldPath, int] = field(default_factory=dict, repr=False)
    # First line of each string's text (the line after ``key: |`` for block scalars), so that a
    # syntax error inside embedded Python source can be reported at its own line.
    text_lines: Mapping[FieldPath, int] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tier(self) -> str:
        return self.spec.tier

    @property
    def status(self) -> str:
        return self.spec.status

    def line_of(self, path: FieldPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor the file spells out."""
        return nearest_line(self.lines, path)

    def issue(self, path: FieldPath, message: str, line: int | None = None) -> SpecIssue:
        return SpecIssue(self.relpath, line if line is not None else self.line_of(path),
                         format_field(path), message)


def nearest_line(lines: Mapping[FieldPath, int], path: FieldPath) -> int | None:
    for size in range(len(path), -1, -1):
        line = lines.get(tuple(path[:size]))
        if line is not None:
            return line
    return None


def format_field(path: FieldPath) -> str:
    """``("signature", "inputs", 0, "shape")`` -> ``signature.inputs[0].shape``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def show(value: Any, limit: int = 60) -> str:
    """A value as a message quotes it, shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- YAML with line numbers ---------------------------------------------------------------------


class _Builder:
    """Turns a composed YAML node tree into plain Python values, recording lines and problems."""

    def __init__(self, relpath: str):
        self.relpath = relpath
        self.lines: dict[FieldPath, int] = {}
        self.text_lines: dict[FieldPath, int] = {}
        self.issues: list[SpecIssue] = []
        self._seen: set[int] = set()

    def problem(self, node: yaml.Node, path: FieldPath, message: str) -> None:
        self.issues.append(SpecIssue(self.relpath, node.start_mark.line + 1, format_field(path),
                                     message))

    def build(self, node: yaml.Node, path: FieldPath) -> Any:
        if id(node) in self._seen:  # the composer shares one node between anchor and alias
            self.issues.append(SpecIssue(self.relpath, nearest_line(self.lines, path),
                                         format_field(path), "YAML aliases (*name) are not "
                                         "supported: write the value out"))
            return None
        self._seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != f"{_TAG}seq":
                self.problem(node, path, f"unsupported YAML tag {node.tag}: write a plain list")
                return None
            items = []
            for index, item in enumerate(node.value):
                self.lines[(*path, index)] = item.start_mark.line + 1
                items.append(self.build(item, (*path, index)))
            return items
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: FieldPath) -> dict[str, Any] | None:
        if node.tag != f"{_TAG}map":
            self.problem(node, path, f"unsupported YAML tag {node.tag}: write a plain mapping")
            return None
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == f"{_TAG}merge":
                self.problem(key_node, path, "YAML merge keys (<<) are not supported: write the "
                             "fields out")
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != f"{_TAG}str":
                key = (self._scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode)
                       else "a list or mapping")
                self.problem(key_node, path, f"keys must be strings, got {show(key)}: put the key "
                             "in quotes")
                continue
            key = key_node.value
            if key in result:
                self.problem(key_node, (*path, key),
                             f"duplicate key (first given on line {first_line[key]})")
                continue
            first_line[key] = line
            self.lines[(*path, key)] = line
            result[key] = self.build(value_node, (*path, key))
        return result

    def _scalar(self, node: yaml.ScalarNode, path: FieldPath) -> Any:
        if node.tag == f"{_TAG}str":
            plain = not node.style  # None from PyYAML's parser, "" from libyaml's
            if plain and _FLOAT_WITHOUT_DOT.match(node.value):
                return float(node.value.replace("_", ""))
            if path:
                first = node.start_mark.line + 1
                # a block scalar's text starts on the line after its "|" or ">" indicator
                self.text_lines[path] = first + 1 if node.style in ("|", ">") else first
            return node.value
        if node.tag == f"{_TAG}timestamp":
            return node.value  # dates stay text
        if node.tag in _SCALAR_TAGS:
            # the constructor's own conversion (0x10, 1_000, .inf, yes/no ...), without its cache
            return _constructor.yaml_constructors[node.tag](_constructor, node)
        self.problem(node, path, f"unsupported YAML tag {node.tag}: write plain values")
        return None


def _anchor_issues(text: str, relpath: str) -> list[SpecIssue]:
    if "&" not in text:  # cheap test first: anchors need an "&"
        return []
    issues: list[SpecIssue] = []
    for event in yaml.parse(text, Loader=_Loader):
        anchor = getattr(event, "anchor", None)
        if anchor is not None and not isinstance(event, yaml.AliasEvent):
            issues.append(SpecIssue(relpath, event.start_mark.line + 1, "",
                                    f"YAML anchors (&{anchor}) are not supported: write the "
                                    "value out"))
    return issues


def read_yaml(text: str, relpath: str,
              ) -> tuple[Any, dict[FieldPath, int], dict[FieldPath, int], list[SpecIssue]]:
    """The document's value, its line map, its text-line map, and any problems."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        anchors = _anchor_issues(text, relpath)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem, context = error.problem or "", error.context or ""
        if problem and context:
            # "expected a single document, but found another" / "found ... (while scanning ...)"
            what = f"{context}, {problem}" if problem.startswith("but ") else f"{problem} ({context})"
        else:
            what = problem or context or "the file cannot be read"
        started = error.context_mark
        if mark and started and started.line != mark.line and context:
            what += f"; it started on line {started.line + 1}"
        return None, {}, {}, [SpecIssue(relpath, mark.line + 1 if mark else None, "",
                                        f"invalid YAML: {what}")]
    except yaml.YAMLError as error:
        return None, {}, {}, [SpecIssue(relpath, None, "", f"invalid YAML: {error}")]
    if node is None:
        return None, {}, {}, [SpecIssue(relpath, 1, "", "the file is empty: a spec needs at least "
                                        "name, title and tier")]
    builder = _Builder(relpath)
    builder.lines[()] = node.start_mark.line + 1
    value = builder.build(node, ())
    return value, builder.lines, builder.text_lines, anchors + builder.issues


# --- schema errors as located messages ----------------------------------------------------------


_TYPE_NOUNS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list", "tuple_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
}


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete alternatives behind Annotated / Optional / unions."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, UnionType):
        found: list[Any] = []
        for arg in get_args(annotation):
            if arg is not type(None):
                found.extend(_unwrap(arg))
        return found
    return [annotation]


def _model_at(path: FieldPath) -> type[BaseModel] | None:
    """The schema model that describes the mapping at ``path`` (for "allowed fields")."""
    candidates: list[Any] = [Spec]
    for part in path:
        following: list[Any] = []
        for candidate in candidates:
            for concrete in _unwrap(candidate):
                origin = get_origin(concrete)
                if isinstance(concrete, type) and issubclass(concrete, BaseModel):
                    if isinstance(part, str) and part in concrete.model_fields:
                        following.append(concrete.model_fields[part].annotation)
                elif origin in (list, tuple) and isinstance(part, int):
                    following.extend(a for a in get_args(concrete) if a is not Ellipsis)
                elif origin is dict and isinstance(part, str):
                    following.append(get_args(concrete)[1])
        candidates = following
    for candidate in candidates:
        for concrete in _unwrap(candidate):
            if isinstance(concrete, type) and issubclass(concrete, BaseModel):
                return concrete
    return None


def _message(error: Mapping[str, Any], data_path: FieldPath, missing: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    given = error.get("input")
    got = show(given)
    if kind == "missing":
        if isinstance(missing, int):
            return f"item {missing} is missing"
        return "required field is missing"
    if kind == "extra_forbidden":
        model = _model_at(data_path[:-1])
        allowed = list(model.model_fields) if model else []
        unknown = str(data_path[-1]) if data_path else ""
        close = get_close_matches(unknown, allowed, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"unknown field ({hint}allowed: {', '.join(allowed)})"
    if kind == "string_type" and isinstance(given, (bool, int, float)):
        return f"expected a string, got {got} (put it in quotes to keep it as text)"
    if kind in _TYPE_NOUNS:
        return f"expected {_TYPE_NOUNS[kind]}, got {got}"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected', '?')}, got {got}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
                 "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}[kind]
        return f"expected a value {bound[1]} {ctx.get(bound[0])}, got {got}"
    if kind == "too_short":
        needed = ctx.get("min_length")
        noun = "item" if needed == 1 else "items"
        return f"expected at least {needed} {noun}, got {ctx.get('actual_length', '?')}"
    if kind == "too_long":
        return (f"expected at most {ctx.get('max_length')} items, "
                f"got {ctx.get('actual_length', '?')}")
    text = str(error.get("msg", kind))
    for prefix in ("Value error, ", "Assertion failed, "):
        if text.startswith(prefix):
            return text[len(prefix):]
    if text.startswith("Input should be "):
        text = "expected " + text[len("Input should be "):] + f", got {got}"
    return text[:1].lower() + text[1:]


def _in_data(node: Any, part: Any) -> bool:
    """Whether ``part`` of a pydantic ``loc`` is a key or an index of ``node``."""
    if isinstance(node, dict):
        return isinstance(part, str) and part in node
    return (isinstance(node, list) and isinstance(part, int) and not isinstance(part, bool)
            and 0 <= part < len(node))


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[FieldPath, tuple[Any, ...]]:
    """Split a pydantic ``loc`` into the part that exists in the data and the rest (a missing
    field, union branch names such as ``int`` / ``str``, ``[key]`` markers). A union branch's
    name followed by what is in the data (``state``'s ``list[State]``, 0, ``shape``) is
    skipped: the branch got that far."""
    path: list[str | int] = []
    node = data
    for position, part in enumerate(loc):
        if not _in_data(node, part):
            following = loc[position + 1:]
            if isinstance(part, str) and following and _in_data(node, following[0]):
                continue
            return tuple(path), tuple(loc[position:])
        node = node[part]
        path.append(part)
    return tuple(path), ()


def validation_issues(error: ValidationError, data: Any, lines: Mapping[FieldPath, int],
                      relpath: str) -> list[SpecIssue]:
    """pydantic's errors as located, readable issues; one issue per field (union branches that
    all failed on a type are merged into "expected an integer or a string, got ...")."""
    grouped: dict[FieldPath, list[tuple[Mapping[str, Any], tuple[Any, ...]]]] = {}
    for entry in error.errors(include_url=False):
        path, rest = _data_path(tuple(entry["loc"]), data)
        if entry["type"] == "missing" and rest:
            path = (*path, rest[-1])
        grouped.setdefault(path, []).append((entry, rest))
    issues: list[SpecIssue] = []
    for path, entries in grouped.items():
        if all(e["type"] in _TYPE_NOUNS for e, _ in entries) and any(
                len(other) > len(path) and other[:len(path)] == path for other in grouped):
            continue  # a union branch of another type; one that got further says more
        line = nearest_line(lines, path)
        key_errors = [(e, r) for e, r in entries if "[key]" in r]
        if key_errors:
            entry, _ = key_errors[0]
            issues.append(SpecIssue(relpath, line, format_field(path),
                                    f"invalid key: {_message(entry, path, None)}"))
            continue
        type_errors = [e for e, _ in entries if e["type"] in _TYPE_NOUNS]
        if len(entries) > 1 and len(type_errors) == len(entries):
            nouns = list(dict.fromkeys(_TYPE_NOUNS[e["type"]] for e in type_errors))
            listed = nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " or " + nouns[-1]
            issues.append(SpecIssue(relpath, line, format_field(path),
                                    f"expected {listed}, got {show(entries[0][0].get('input'))}"))
            continue
        # a union branch that got past the type check says more than the ones that did not
        meaningful = [(e, r) for e, r in entries if e["type"] not in _TYPE_NOUNS] or entries
        seen: set[str] = set()
        for entry, rest in meaningful:
            message = _message(entry, path, rest[-1] if rest else None)
            if message not in seen:
                seen.add(message)
                issues.append(SpecIssue(relpath, line, format_field(path), message))
    return issues


# --- one file -----------------------------------------------------------------------------------


def parse_spec(content: bytes, path: Path, relpath: str,
               ) -> tuple[LoadedSpec | None, list[SpecIssue]]:
    """A spec from a file's bytes: YAML, then the schema (no checks across fields yet)."""
    digest = hashlib.sha256(content).hexdigest()
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        line = content[: error.start].count(b"\n") + 1
        return None, [SpecIssue(relpath, line, "", "the file is not UTF-8 text")]
    data, lines, text_lines, issues = read_yaml(text, relpath)
    if issues:
        return None, issues
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the value {show(data)}"
        return None, [SpecIssue(relpath, lines.get((), 1), "",
                                f"expected a mapping of fields (name: ..., title: ...), "
                                f"got {kind}")]
    try:
        spec = Spec.model_validate(data)
    except ValidationError as error:
        return None, validation_issues(error, data, lines, relpath)
    return LoadedSpec(spec=spec, path=path, relpath=relpath, sha256=digest, lines=lines,
                      text_lines=text_lines), []


def is_identifier(text: str) -> bool:
    return bool(_IDENTIFIER.match(text)) and not keyword.iskeyword(text)
