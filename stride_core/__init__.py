"""STRIDE audit: training-data attribution by learned activation-space steering operators.

Importing this package has no side effects; heavy modules (torch, transformers, duckdb) are
imported by the submodules that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
