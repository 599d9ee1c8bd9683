"""Gradient rules: resize (to be written)."""
