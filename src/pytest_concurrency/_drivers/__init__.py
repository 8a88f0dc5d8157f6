"""Protocol drivers: how a request reaches the app under test."""
