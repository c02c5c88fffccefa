"""The workspace and its data: the DuckDB corpus store (corpus, identifiers), the token store, model loading
(models) and the built-in model and corpus (tiny_model, pydocs), run locks, input files (items) and the text
utilities the audits and the lexical hybrid share (text). Depends on the method layer only for its arguments
and artifact helpers.
"""
