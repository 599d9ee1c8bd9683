"""Gradient rules: reduction (to be written)."""
