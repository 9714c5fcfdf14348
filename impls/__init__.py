"""Backends: each converts arrays in and out and runs normalizations forward and backward.

Backends are discovered through the entry-point group `normspec.backends`; see `base.Backend`.
"""
