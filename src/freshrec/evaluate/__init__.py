"""Prequential (test-then-learn) evaluation, as ``../shared/BENCHMARK.md`` defines it."""
