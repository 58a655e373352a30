"""The benchmark harness (install with ``pip install emergeinit[bench]``): data, models, training,
grids of runs and their reports, for the paper's Table 1 (images) and Table 2 (translation)."""
