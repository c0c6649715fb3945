"""A procedurally generated world of coloured shapes, a small SD-shaped model trained on it, and a judge.

A development package (not part of the product wheel): it trains the `shapes` model that the product
ships as an ordinary model folder (editing/assets/shapes-model) and measures edit quality against the
world's ground truth (`python -m editing eval --shapes` from a source checkout).
"""
