"""Readers for standard data formats and the synthetic data generator.

Readers yield :class:`~freshrec.datasets.files.Record` objects: raw mappings
tagged with where they came from (file and line), so that every error can
point at its source. Validation happens in :mod:`freshrec.ingest`.
"""
