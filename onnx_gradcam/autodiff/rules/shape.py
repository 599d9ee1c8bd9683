"""Gradient rules: shape (to be written)."""
