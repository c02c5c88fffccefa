"""The pipeline's public API: `index` (cache activations, design subsets, fit operators, reference) and `attribute`
(continuations, measurement, recovery, ranked documents), with resumable on-disk artifacts.

Run folder (workspace/runs/<run>/):
  args.json, provenance.json, status.json
  cache/                      activation memmaps (activations.py), resumable per document
  subsets.safetensors         membership (N, S) + doc_ids
  operators.safetensors       basis, steering matrices, reference y
  operators_trace.json        loss terms per step
  attributions.parquet        ranked documents of the latest `attribute` call (the DuckDB rows derive from it)
A stage whose artifact exists is skipped; changed arguments under an existing run name raise unless
overwrite=True, or unless only stages that never finished depend on them (those restart). Artifacts
are written to a temporary name and renamed, so an interrupted stage is never mistaken for a finished
one; a failed stage records `failed` with its error in status.json. `index` and `attribute` hold the
run's lock (stride_core.store.locks).

The stages live in config, indexing, prompts, attribution and run_files; this module gathers what a caller
uses (README: `from stride_core.runs.pipeline import make_config, count_documents, index, attribute`).
"""

from .attribution import (ATTRIBUTION_COLUMNS, HYBRID_COLUMNS, PROMPT_USE_COLUMNS, OpenRun, attribute, open_run, run_all,
                          run_state, sync_attributions)
from .config import IndexConfig, count_documents, make_config
from .indexing import begin_run, index, load_run
from .prompts import parse_prompts, read_prompts
from .run_files import write_table

__all__ = ["ATTRIBUTION_COLUMNS", "HYBRID_COLUMNS", "PROMPT_USE_COLUMNS", "IndexConfig", "OpenRun", "attribute", "begin_run",
           "count_documents", "index", "load_run", "make_config", "open_run", "parse_prompts", "read_prompts", "run_all",
           "run_state", "sync_attributions", "write_table"]
