"""The one Jinja environment every rendering goes through.

Sandboxed, ``StrictUndefined`` (a name a template does not get is an error, never an empty
string), ``keep_trailing_newline``, and a loader confined to one templates folder: a template
name that climbs out of it (``../x``) or a symlink that points outside is refused. The filters
and globals that templates share are registered here and nowhere else:

- ``pyrepr``: a value as a Python literal (``1e-06``, ``"float32"``, ``[1, 2]``, ``None``);
- ``shape_doc``: a symbolic shape as text, ``["...", "d"]`` -> ``(..., d)``;
- ``docstring``: text as a triple-quoted literal (raw when it holds backslashes), indented;
- ``yaml_str``: a string as a double-quoted YAML scalar;
- ``kernel_param(name, choices=None, default=...)``: a family's parameter from the spec's
  ``kernel.params``, checked; a missing or wrong value is a :class:`TemplateSpecError` that names
  the spec field, so the spec author learns what to fix;
- ``kernel_params_allowed(names)``: rejects ``kernel.params`` keys the family does not know;
- ``spec_error(field, message)``: any other complaint a template has about its spec.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

_MISSING = object()


class TemplateSpecError(Exception):
    """A template found something wrong with the spec it renders (not with itself)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ConfinedLoader(jinja2.FileSystemLoader):
    """A FileSystemLoader for one folder that refuses anything resolving outside it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder).resolve()
        super().__init__(str(self.folder), followlinks=False)

    def get_source(self, environment: jinja2.Environment, template: str):
        candidate = (self.folder / template).resolve()
        if candidate != self.folder and self.folder not in candidate.parents:
            raise jinja2.TemplateNotFound(template)
        return super().get_source(environment, template)


def pyrepr(value: Any) -> str:
    """``value`` as Python source. Only plain data: a spec value that is not one is a bug."""
    if isinstance(value, str):
        text = repr(value)
        if text.startswith("'") and '"' not in value:  # double quotes, as the rest of the code
            text = '"' + text[1:-1].replace("\\'", "'") + '"'
        return text
    if value is None or isinstance(value, (bool, int)):
        return repr(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return f'float("{value}")'
        return repr(value)
    if isinstance(value, tuple):
        items = ", ".join(pyrepr(item) for item in value)
        return f"({items},)" if len(value) == 1 else f"({items})"
    if isinstance(value, list):
        return "[" + ", ".join(pyrepr(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{pyrepr(k)}: {pyrepr(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"pyrepr: cannot write {type(value).__name__} {value!r} as a Python literal")


def shape_doc(shape: Sequence[Any]) -> str:
    """A symbolic shape as people write it: ``["...", "d"]`` -> ``(..., d)``, ``["d"]`` -> ``(d,)``."""
    parts = [str(dim) for dim in shape]
    return f"({parts[0]},)" if len(parts) == 1 else "(" + ", ".join(parts) + ")"


def docstring(text: str, indent: int = 0) -> str:
    """``text`` as a triple-quoted Python string literal, its later lines indented by ``indent``
    spaces; raw when the text has backslashes (math often does)."""
    body = text.strip("\n").replace('"""', "'''")
    lines = [line.rstrip() for line in body.splitlines()] or [""]
    pad = " " * indent
    joined = "\n".join([lines[0], *[(pad + line) if line else "" for line in lines[1:]]])
    if joined.endswith(('"', "\\")):
        joined += " "
    closing = f"\n{pad}" if len(lines) > 1 else ""
    prefix = "r" if "\\" in joined else ""
    return f'{prefix}"""{joined}{closing}"""'


def yaml_str(value: str) -> str:
    """A string as a double-quoted YAML scalar (JSON's escaping is valid YAML)."""
    return json.dumps(str(value), ensure_ascii=False)


def spec_error(field: str, message: str) -> None:
    raise TemplateSpecError(field, message)


@jinja2.pass_context
def kernel_param(context: Any, name: str, choices: Iterable[Any] | None = None,
                 default: Any = _MISSING) -> Any:
    """``kernel.params[name]``, which must be one of ``choices`` when they are given."""
    params = context.get("params") or {}
    field = f"kernel.params.{name}"
    if name not in params:
        if default is _MISSING:
            allowed = f" (one of {', '.join(map(repr, choices))})" if choices is not None else ""
            raise TemplateSpecError(field, f"the {context.get('family', '?')} family needs this "
                                    f"parameter{allowed}")
        return default
    value = params[name]
    if choices is not None:
        allowed = list(choices)
        if value not in allowed:
            raise TemplateSpecError(field, f"expected one of {', '.join(map(repr, allowed))}, "
                                    f"got {value!r}")
    return value


@jinja2.pass_context
def kernel_params_allowed(context: Any, names: Iterable[str]) -> str:
    """Reject ``kernel.params`` keys outside ``names``; renders nothing."""
    known = list(names)
    unknown = [key for key in (context.get("params") or {}) if key not in known]
    if unknown:
        raise TemplateSpecError(f"kernel.params.{unknown[0]}",
                                f"the {context.get('family', '?')} family has no such parameter "
                                f"(its parameters: {', '.join(known)})")
    return ""


def environment(templates_dir: Path) -> jinja2.Environment:
    """The Jinja environment for the templates in ``templates_dir``."""
    env = SandboxedEnvironment(
        loader=ConfinedLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = pyrepr
    env.filters["shape_doc"] = shape_doc
    env.filters["docstring"] = docstring
    env.filters["yaml_str"] = yaml_str
    env.globals["kernel_param"] = kernel_param
    env.globals["kernel_params_allowed"] = kernel_params_allowed
    env.globals["spec_error"] = spec_error
    return env
