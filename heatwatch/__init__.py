"""The ``heatwatch`` command and the local stack used by ``heatwatch demo`` and the tests.

This is the only package that imports gateway, collector, api and simulator together.
"""
