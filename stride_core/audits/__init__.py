"""The audits over an indexed run: benchmark contamination (contamination) and data selection (selection)."""
