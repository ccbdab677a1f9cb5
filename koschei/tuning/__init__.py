"""The search for faster tunable values: the search space of a spec, the strategies that walk
it, the crash-safe log of every result, and the runners that evaluate candidates (locally, or on
a Dask cluster). The evolve phase drives it; the measuring itself is koschei.bench's."""
