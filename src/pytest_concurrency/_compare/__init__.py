"""Comparisons of a storm with another version of the app: the paired control/experiment run."""
