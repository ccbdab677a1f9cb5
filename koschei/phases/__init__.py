"""The phases of the Koschei cycle, one module each, plus the cycle that runs them in order.

Each phase is ``run(workspace, options, progress=None) -> Result``: no Typer, no printing.
Results are dataclasses that serialize to JSON (``Result.to_dict``) and are saved in run records.
"""

PHASES = (
    "pas_analyze",
    "tech_tree",
    "spec_create",
    "code_generate",
    "test_run",
    "benchmark",
    "git_commit",
)
# ``koschei cycle --loop``: each iteration also evolves the best target of pas_analyze's ranking
# before committing.
LOOP_PHASES = (*PHASES[:-1], "evolve", PHASES[-1])
