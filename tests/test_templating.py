"""The one Jinja environment: strict, confined to its folder, with the filters templates share."""

from __future__ import annotations

import math

import jinja2
import pytest

from koschei.templating import (
    TemplateSpecError,
    docstring,
    environment,
    pyrepr,
    shape_doc,
    yaml_str,
)


@pytest.fixture
def templates(tmp_path):
    folder = tmp_path / "templates"
    (folder / "families").mkdir(parents=True)
    return folder


def render(folder, text: str, **context) -> str:
    (folder / "t.j2").write_text(text, encoding="utf-8")
    return environment(folder).get_template("t.j2").render(context)


@pytest.mark.parametrize("value", [
    None, True, 0, -3, 1e-06, 0.1, 2.5e300, "plain", "it's", 'say "hi"', "back\\slash\n",
    [1, "a", [2.0]], (1,), (1, 2), {"...": [4096], "d": 768}, math.inf, -math.inf,
])
def test_pyrepr_writes_python_that_reads_back_the_same_value(value):
    assert eval(pyrepr(value)) == value  # it is Python source


def test_pyrepr_prefers_double_quotes_and_refuses_objects():
    assert pyrepr("float32") == '"float32"'
    assert pyrepr(["x", 1]) == '["x", 1]'
    with pytest.raises(TypeError, match="cannot write"):
        pyrepr(object())


def test_shape_doc_and_docstring():
    assert shape_doc(["...", "d"]) == "(..., d)"
    assert shape_doc(["d"]) == "(d,)"
    assert docstring("One line.") == '"""One line."""'
    assert docstring("Title.\n\nBody", 4) == '"""Title.\n\n    Body\n    """'
    assert docstring("math: \\sqrt{x}").startswith('r"""')
    assert docstring('ends with a "quote"').endswith('" """')
    assert eval(docstring('has """ inside')) == "has ''' inside"


def test_yaml_str_is_a_yaml_string():
    import yaml

    for text in ["plain", "with: colon", "quote \" and 'single'", "é"]:
        assert yaml.safe_load(f"title: {yaml_str(text)}") == {"title": text}


def test_undefined_names_are_errors_not_empty_strings(templates):
    with pytest.raises(jinja2.UndefinedError):
        render(templates, "{{ missing }}")
    with pytest.raises(jinja2.UndefinedError):
        render(templates, "{{ params.missing }}", params={})


def test_the_loader_stays_inside_its_folder(templates, tmp_path):
    (tmp_path / "secret.j2").write_text("secret", encoding="utf-8")
    env = environment(templates)
    with pytest.raises(jinja2.TemplateNotFound):
        env.get_template("../secret.j2")
    (templates / "families" / "link.py.j2").symlink_to(tmp_path / "secret.j2")
    with pytest.raises(jinja2.TemplateNotFound):
        env.get_template("families/link.py.j2")
    with pytest.raises(jinja2.TemplateNotFound):
        render(templates, '{% include "families/" ~ name ~ ".py.j2" %}', name="../../secret")


def test_the_environment_is_sandboxed(templates):
    with pytest.raises(jinja2.exceptions.SecurityError):
        render(templates, "{{ value.__class__.__mro__ }}", value=1)


def test_kernel_param_checks_the_spec_and_names_the_field(templates):
    text = '{{ kernel_param("shift", ["none", "max"], default="none") }}'
    assert render(templates, text, params={}, family="rowwise") == "none"
    assert render(templates, text, params={"shift": "max"}, family="rowwise") == "max"
    with pytest.raises(TemplateSpecError) as caught:
        render(templates, text, params={"shift": "median"}, family="rowwise")
    assert caught.value.field == "kernel.params.shift" and "'median'" in caught.value.message
    with pytest.raises(TemplateSpecError, match="needs this parameter"):
        render(templates, '{{ kernel_param("scale") }}', params={}, family="rowwise")
    with pytest.raises(TemplateSpecError, match="no such parameter") as caught:
        render(templates, '{{ kernel_params_allowed(["shift"]) }}', params={"sift": 1},
               family="rowwise")
    assert caught.value.field == "kernel.params.sift"
    with pytest.raises(TemplateSpecError, match="what is wrong"):
        render(templates, '{{ spec_error("signature", "what is wrong") }}')


def test_trailing_newlines_are_kept_and_block_lines_vanish(templates):
    assert render(templates, "{% if true %}\nline\n{% endif %}\n") == "line\n"
