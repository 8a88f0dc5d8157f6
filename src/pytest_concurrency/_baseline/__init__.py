"""Saved baselines: the store, the noise model, the comparison with one, and its wording."""
