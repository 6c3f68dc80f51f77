"""Typed parameters, one module per params.yaml section group (no torch here).

This package imports nothing on purpose: a stage process imports only the modules of its own sections
(llmpipe.config.sections), so editing one stage's params model re-runs that stage alone."""
