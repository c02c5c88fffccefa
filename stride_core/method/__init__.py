"""The method: tasks -> activations -> subsets -> operators -> measurement -> recovery (estimator ties them),
with the generic component and the arguments of each stage.

It depends on torch and numpy only: no DuckDB, no workspace, no command line, no files beyond its own artifacts
(storage.py). tests/test_structure.py checks that it imports nothing from the layers above.
"""
