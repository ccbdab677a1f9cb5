"""koschei: the Koschei cycle over a library of CPU kernels for small language models.

pas_analyze -> tech_tree -> spec_create -> code_generate -> test_run -> benchmark -> git_commit -> loop

Importing this package is cheap: it imports neither numba nor the engine kernels.
"""

__version__ = "0.1.0"
