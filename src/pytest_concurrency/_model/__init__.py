"""Plain result types and the remarks a measurement attaches to its result.

Nothing here measures, formats a report or loads pytest: the engine, the drivers, the
probes and the metrics fill these in, and the report reads them. Nothing is imported here;
import from the submodules.
"""
