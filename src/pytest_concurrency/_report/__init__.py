"""Reports of a session's storms: terminal tables, JSON documents, HTML pages, baselines.

Plotly (for HTML) is imported only when a page is written.
"""

from ._baseline import (
    Comparison,
    FigureDelta,
    Threshold,
    compare,
    comparison_table,
    machine_warning,
    parse_compare_fail,
    regressions,
)
from ._json import (
    JSON_SCHEMA,
    SCHEMA_VERSION,
    load_json,
    machine_info,
    merge_histograms,
    session_document,
    write_json,
)
from ._options import ReportSession, add_options
from ._records import StormRecord, StormRow, as_records
from ._terminal import LiveProgress, noise_statement, storms_table

__all__ = [
    "JSON_SCHEMA",
    "SCHEMA_VERSION",
    "Comparison",
    "FigureDelta",
    "LiveProgress",
    "ReportSession",
    "StormRecord",
    "StormRow",
    "Threshold",
    "add_options",
    "as_records",
    "compare",
    "comparison_table",
    "load_json",
    "machine_info",
    "machine_warning",
    "merge_histograms",
    "noise_statement",
    "parse_compare_fail",
    "regressions",
    "session_document",
    "storms_table",
    "write_json",
]
