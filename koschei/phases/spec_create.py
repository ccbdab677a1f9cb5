"""The spec_create phase: scaffold a new spec, or (in a cycle) report the spec set.

With a name: renders ``templates/spec.yaml.j2`` into ``specs/<tier>/<name>.yaml``, a spec that
validates and renders as it is but whose reference raises ``NotImplementedError("TO FILL IN:
...")``, so its generated tests fail until someone fills it in. The scaffold is validated and
rendered in memory before it is written (atomically); an existing name or alias, a name that is
not an identifier, an unknown family or tier are refused.

Without a name (as the cycle runs it): every spec is loaded and validated, and the result lists
each one with its status and the sha256 of its file — what the rest of the cycle works from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from koschei.errors import SpecError, UsageError
from koschei.files import write_bytes_atomic
from koschei.phases.base import Progress, Result, SilentProgress
from koschei.specs.graph import TIER_ORDER
from koschei.specs.load import is_identifier
from koschei.templating import environment, pyrepr
from koschei.workspace import Workspace

SPEC_TEMPLATE = "spec.yaml.j2"
BUILT_IN_SCAFFOLDS = ("rowwise", "custom")
DEFAULT_FAMILY = "custom"
DEFAULT_TIER = "foundation"


@dataclass
class Options:
    name: str | None = None  # None: report the spec set instead of scaffolding
    family: str | None = None  # default: custom
    tier: str | None = None  # default: foundation
    title: str | None = None  # default: the name, in words


@dataclass
class SpecEntry:
    name: str
    tier: str
    status: str  # implemented | planned
    family: str | None
    path: str  # workspace-relative
    sha256: str


@dataclass
class SpecCreateResult(Result):
    created: list[str] = field(default_factory=list)  # workspace-relative paths written
    specs: list[SpecEntry] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)

    def summary(self) -> str:
        implemented = sum(1 for spec in self.specs if spec.status == "implemented")
        created = f"created {', '.join(self.created)}" if self.created else "no spec created"
        return f"{len(self.specs)} spec(s), {implemented} implemented; {created}"


def entry(loaded: Any) -> SpecEntry:
    kernel = loaded.spec.kernel
    return SpecEntry(name=loaded.name, tier=loaded.tier, status=loaded.status,
                     family=kernel.family if kernel is not None else None,
                     path=loaded.relpath, sha256=loaded.sha256)


def reference_call(signature: Any) -> str:
    """The parameter list of a reference with ``signature``: inputs, then keyword parameters."""
    parts = [tensor.name for tensor in signature.inputs]
    if signature.params:
        parts.append("*")
        for param in signature.params:
            required = param.default is None and not param.optional
            parts.append(param.name if required else f"{param.name}={pyrepr(param.default)}")
    return ", ".join(parts)


def example_sections(spec_set: Any, family: str) -> tuple[str, str, str]:
    """An implemented spec of ``family`` to start from: (its path, its kernel, signature,
    tunables, tests and bench as YAML, the reference's parameter list)."""
    examples = [loaded for loaded in spec_set.implemented() if loaded.spec.kernel.family == family]
    if not examples:
        raise UsageError(f"--family {family}: no implemented spec uses this family yet, so there "
                         "is nothing to start a scaffold from",
                         hint=f"scaffold with --family {' or --family '.join(BUILT_IN_SCAFFOLDS)}")
    example = min(examples, key=lambda loaded: loaded.name)
    data = example.spec.model_dump(mode="json", exclude_defaults=True,
                                   include={"kernel", "signature", "tunables", "tests", "bench"})
    tests = data.get("tests", {})
    tests.pop("invariants", None)  # properties of the example, not of the new technique
    tests.pop("torch", None)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=99)
    return example.relpath, text, reference_call(example.spec.signature)


def scaffold_text(workspace: Workspace, spec_set: Any, name: str, family: str, tier: str,
                  title: str) -> str:
    env = environment(workspace.templates_dir)
    context: dict[str, Any] = {"name": name, "title": title, "tier": tier, "family": family,
                               "example": None, "example_path": None, "reference_call": ""}
    if family not in BUILT_IN_SCAFFOLDS:
        path, text, call = example_sections(spec_set, family)
        context.update(example=text, example_path=path, reference_call=call)
    return env.get_template(SPEC_TEMPLATE).render(context)


def check_new_name(spec_set: Any, workspace: Workspace, name: str) -> None:
    if not is_identifier(name) or name != name.lower():
        raise UsageError(f"{name!r} is not a valid spec name: use lowercase letters, digits and "
                         "'_', starting with a letter (it becomes a module and a function name)")
    existing = spec_set.get(name)
    if existing is not None:
        what = "a spec" if existing.name == name else f"an alias of {existing.name}"
        hint = "choose another name, or edit that spec"
        if existing.status == "planned":
            what = "a planned spec" if existing.name == name else what
            hint = (f"implement it in place: add kernel, signature, reference and tests to "
                    f"{existing.relpath} (see the fields of an implemented spec), or choose "
                    "another name")
        raise UsageError(f"{name!r} is already {what} ({existing.relpath})", hint=hint)
    clashes = sorted(workspace.specs_dir.glob(f"*/{name}.yaml"))
    if clashes:
        raise UsageError(f"{workspace.relative(clashes[0])} already exists")


def scaffold(workspace: Workspace, spec_set: Any, options: Options,
             progress: Progress) -> SpecCreateResult:
    from koschei.phases.code_generate import available_families, render_spec
    from koschei.specs.load import parse_spec
    from koschei.specs.validate import check_spec

    name = (options.name or "").strip()
    family = options.family or DEFAULT_FAMILY
    tier = options.tier or DEFAULT_TIER
    check_new_name(spec_set, workspace, name)
    if tier not in TIER_ORDER:
        raise UsageError(f"--tier {tier}: unknown tier", hint=f"tiers: {', '.join(TIER_ORDER)}")
    env = environment(workspace.templates_dir)
    families = available_families(env)
    if family not in families:
        raise UsageError(f"--family {family}: unknown family",
                         hint=f"families (templates/families/): {', '.join(families)}")
    title = (options.title or name.replace("_", " ").capitalize()).strip()

    progress.step(f"scaffolding {name} ({family}, {tier})")
    text = scaffold_text(workspace, spec_set, name, family, tier, title)
    relative = Path("specs") / tier / f"{name}.yaml"
    path = workspace.inside(relative)
    content = text.encode("utf-8")
    loaded, issues = parse_spec(content, path, relative.as_posix())
    if loaded is not None:
        issues = check_spec(loaded, tier)
    if issues or loaded is None:
        raise SpecError(issues)  # the scaffold itself is wrong: a template bug, nothing written
    progress.step(f"checking that {name} renders")
    render_spec(env, loaded)
    write_bytes_atomic(path, content)
    return SpecCreateResult(
        created=[relative.as_posix()], specs=[entry(loaded)],
        next_steps=[f"fill in every TO FILL IN in {relative.as_posix()}",
                    "koschei code-generate",
                    f"koschei test-run -k {name}   (fails until the reference is filled in)"])


def run(workspace: Workspace, options: Options, progress: Progress | None = None,
        ) -> SpecCreateResult:
    from koschei.specs import load_specs

    progress = progress or SilentProgress()
    progress.step("loading and validating the specs")
    spec_set = load_specs(workspace)
    if options.name is not None:
        return scaffold(workspace, spec_set, options, progress)
    if options.family is not None or options.tier is not None or options.title is not None:
        raise UsageError("--family, --tier and --title describe a new spec: give its NAME too")
    return SpecCreateResult(specs=[entry(loaded) for loaded in spec_set])
