"""Benchmarks of freezepolicy: `make bench` (or `python -m bench.run`) runs them all.

One module per benchmark (`step_time`, `lr_zero`, `scaling`, `parse`, `lint_time`), shared
timing helpers in `common`, and `run` to run them, print the table, write `bench/results.json`
and regenerate docs/performance.md. See docs/performance.md for the method.
"""
