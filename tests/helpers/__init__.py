"""Helpers the test modules share: golden readers and error checks (parity), the reference weight rule
(reference_weights), a small quick-compiling model (small_model), upstream config dicts (upstream_configs),
multi-process launches (multiprocess) and evaluation-dataset fixtures (eval_fixtures)."""
