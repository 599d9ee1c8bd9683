"""Gradient rules: normalization (to be written)."""
