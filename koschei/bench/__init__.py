"""Measuring: interleaved timing and its statistics (``timing``), the correctness gate and the
inputs of a bench case (``check``), the roofline figures (``roofline``), case results
(``results``), this machine's calibration and ceilings (``calibration``, ``machine``), the model
cases (``models``), and the charts and reports (``report``).

Used by the benchmark and evolve phases; nothing here imports a phase or the CLI.
"""
