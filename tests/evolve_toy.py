"""The toy spec of the evolve tests: ``double`` (y = 2 x) over a template family ``modes`` whose
tunable picks a right, a slow, a wrong, a crashing and a hanging kernel, and one
(``lopsided``) fast on short inputs and slower than the slow one on long ones."""

from __future__ import annotations

import shutil
from pathlib import Path

from koschei.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent

MODES_FAMILY = """\
{{ kernel_params_allowed([]) }}
{% set mode = tunables.get("mode", "slow") %}


@njit(cache=True)
def _double(x, out):
    for i in range(x.shape[0]):
        out[i] = x[i] * np.float32(2.0)


def _compute(x, out):
    \"\"\"out = 2 x, the {{ mode }} way.\"\"\"
{% if mode == "right" %}
    _double(x, out)
{% elif mode == "slow" %}
    for _ in range(30):
        _double(x, out)
{% elif mode == "lopsided" %}
    for _ in range(1 if x.shape[0] <= 100000 else 60):
        _double(x, out)
{% elif mode == "wrong" %}
    _double(x, out)
    out[0] += np.float32(1.0)
{% elif mode == "crash" %}
    import os, signal
    os.kill(os.getpid(), signal.SIGSEGV)
{% elif mode == "hang" %}
    import time
    time.sleep(3600)
{% endif %}
"""

MODES = ("slow", "right", "wrong", "crash", "hang")

DOUBLE_SPEC = """\
name: double
title: Twice the input
tier: foundation
summary: y = 2 x, with a tunable that picks how.
kernel:
  family: modes
signature:
  inputs:
    - {name: x, dtype: float32, shape: [n]}
  output: {name: y, dtype: float32, shape: [n]}
reference: |
  def reference(x):
      return (x * 2).astype(np.float32)
tunables:
  mode: {choices: [slow, right, wrong, crash, hang], default: slow}
tests:
  cases:
    - dims: {n: 1}
    - dims: {n: 1000}
  tolerance:
    float32: {rtol: 1.0e-6, atol: 1.0e-6}
bench:
  cases:
    - {name: long, dims: {n: 200000}}
    - {name: short, dims: {n: 20000}}
  bytes: "8 * n"
  flops: "n"
"""


def toy_workspace(root: Path, modes: tuple[str, ...] = MODES) -> Workspace:
    """A workspace at ``root`` with the repository's templates, the ``modes`` family and the
    ``double`` spec, its tunable's choices ``modes`` (the first is the default)."""
    shutil.copytree(REPO / "templates", root / "templates")
    (root / "templates" / "families" / "modes.py.j2").write_text(MODES_FAMILY)
    (root / "specs" / "foundation").mkdir(parents=True)
    spec = DOUBLE_SPEC.replace("{choices: [slow, right, wrong, crash, hang], default: slow}",
                               f"{{choices: [{', '.join(modes)}], default: {modes[0]}}}")
    (root / "specs" / "foundation" / "double.yaml").write_text(spec)
    (root / "koschei.toml").write_text("")
    return Workspace.find(root)
