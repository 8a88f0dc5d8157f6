"""Popular claims of framework-comparison articles, measured in-process on the examples.

``python -m examples.claims [--quick]`` (``make demo``) runs one scenario per claim against
the example apps next to this package, judges each claim from the figures it measured and
prints the claims table; it writes ``reports/claims.md`` and ``reports/claims.json``.

One module per claim holds its scenario, its thresholds (named constants) and its pure
``judge_*`` function: the scenarios only measure and the judges only judge, so the tests
pin the judges with made-up figures. ``base`` holds what the claims share, ``render`` the
tables and ``runner`` the command.

This package imports nothing at import time, so that ``python -m examples.claims`` can
say which library is missing before any example app is loaded.
"""
