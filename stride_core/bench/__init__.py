"""LDS benchmark: settings with retrained ground-truth models, the LDS metric, baselines and a harness.

- `settings`: the benchmark settings (`digits-mlp`, `tiny-lm`), their data, models and training.
- `ground_truth`: M models retrained on random 50% subsets, query outputs cached as Parquet.
- `lds`: linear datamodeling score (Spearman per query), its query-specific variant and a summary.
- `baselines`: random, query-independent, TF-IDF, representation similarity, gradient dot product.
- `harness`: `run_lds_bench` and the method registry `METHODS`.

Importing this package has no side effects and imports nothing heavy.
"""
