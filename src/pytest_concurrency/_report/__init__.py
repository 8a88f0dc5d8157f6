"""Reports of a session's storms: terminal tables, JSON documents, HTML pages, baselines.

Nothing is imported here, so that importing one format does not load the others (or
pytest); import from the submodules. Plotly (for HTML) is imported only when a page is
written.
"""
