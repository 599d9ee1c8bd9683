"""Gradient rules: indexing (to be written)."""
