"""Run every claim's scenario, print the claims table and write ``claims.md`` / ``claims.json``."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_concurrency import ConcurrencyWarning

from . import (
    blocking,
    db_pool,
    pydantic_speed,
    scale,
    streaming,
    sync_to_async,
    websocket_chat,
    workers,
)
from .base import ClaimRow, Demo, DemoSettings, DemoStorm
from .render import claims_markdown, claims_table, storms_text

__all__ = ["STEPS", "build_parser", "machine_line", "main", "run_claims"]

#: The claims in the order they are run and printed.
STEPS: tuple[Callable[[Demo], ClaimRow | tuple[ClaimRow, ...]], ...] = (
    workers.run,
    scale.run,
    sync_to_async.run,
    blocking.run,
    streaming.run,
    websocket_chat.run,
    pydantic_speed.run,
    db_pool.run,
)


def run_claims(
    settings: DemoSettings, *, progress: Callable[[str], None] = lambda line: None
) -> tuple[list[ClaimRow], list[DemoStorm]]:
    """Run every claim's scenario and judge it; return the rows and every storm they fired."""
    demo = Demo(settings, progress)
    rows: list[ClaimRow] = []
    with warnings.catch_warnings():
        # The storms' own caveats (a saturated loop, say) are summarised in the notes.
        warnings.simplefilter("ignore", ConcurrencyWarning)
        for step in STEPS:
            started = time.perf_counter()
            made = step(demo)
            made_rows = list(made) if isinstance(made, tuple) else [made]
            elapsed = time.perf_counter() - started
            for row in made_rows:
                row.seconds = elapsed / len(made_rows)
            rows.extend(made_rows)
    return rows, demo.storms


def machine_line() -> str:
    """Python, OS and core count of this machine, for the reports."""
    return (
        f"{platform.python_implementation()} {platform.python_version()} on {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} cores"
    )


def _plain(value: Any) -> Any:
    # JSON has no NaN or infinity: a figure that was not measured is null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m examples.claims``."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.claims",
        description="Measure popular framework-comparison claims on the example apps.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller scales and shorter storms (under a minute)"
    )
    parser.add_argument("--out", default="reports", help="directory for claims.md and claims.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo, print the claims and every storm, write the reports; return 0."""
    args = build_parser().parse_args(argv)
    settings = DemoSettings.quick_run() if args.quick else DemoSettings.full_run()
    mode = "quick run" if args.quick else "full run"
    started = time.perf_counter()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"pytest-storm demo ({mode}), {stamp} — {machine_line()}", flush=True)
    print("claims from framework-comparison articles, measured in-process:", flush=True)
    rows, storms = run_claims(settings, progress=lambda line: print(line, flush=True))
    elapsed = time.perf_counter() - started
    heading = (
        f"# pytest-storm demo: framework claims, {stamp}\n\n"
        f"{machine_line()}; {mode}, {len(storms)} storms in {elapsed:,.0f} s."
    )
    print()
    print(claims_table(rows))
    print()
    print("every storm:")
    print(storms_text(storms))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "claims.md").write_text(claims_markdown(rows, storms, heading), encoding="utf-8")
    doc = {
        "date": stamp,
        "machine": machine_line(),
        "mode": mode,
        "seconds": round(elapsed, 1),
        "claims": [row.to_dict() for row in rows],
        "storms": [s.to_dict() for s in storms],
    }
    text = json.dumps(_plain(doc), indent=2, allow_nan=False, default=str)
    (out / "claims.json").write_text(text + "\n", encoding="utf-8")
    print(
        f"\n{len(storms)} storms in {elapsed:,.0f} s; wrote {out / 'claims.md'} and "
        f"{out / 'claims.json'}"
    )
    return 0
