"""A one-model Django app for the Django example (SQLite)."""
