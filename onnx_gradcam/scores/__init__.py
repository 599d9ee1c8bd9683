"""Scores of maps: localisation against ground truth (boxes or masks) and faithfulness to the model."""
