"""A procedurally generated world of coloured shapes, a small SD-shaped model trained on it, and a judge."""
