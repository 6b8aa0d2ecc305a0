"""CLI rendering that needs no server: progress bars and the aligned plain-text table of `get` (and `get -w`)."""

from __future__ import annotations

import pytest

from controller.cli.output import plain_lines, progress_bar, table_rows
from specs.kinds import resolve_kind


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "-"),
        ("12", "-"),
        (True, "-"),
        (0, "[                    ]   0%"),
        (4, "[                    ]   4%"),
        (5, "[>                   ]   5%"),
        (50, "[=========>          ]  50%"),
        (99, "[==================> ]  99%"),
        (100, "[====================] 100%"),
        (250, "[====================] 100%"),
    ],
)
def test_progress_bar(value: object, shown: str) -> None:
    assert progress_bar(value) == shown


def test_migration_table_shows_a_progress_bar() -> None:
    migration = {"metadata": {"name": "m1"}, "spec": {"vm": "web"},
                 "status": {"sourceHost": "h1", "targetHost": "h2", "phase": "Running", "percent": 50}}
    headers, rows = table_rows(resolve_kind("migrations"), [migration], wide=False)
    assert rows[0][headers.index("PROGRESS")] == "[=========>          ]  50%"


def test_plain_lines_keep_later_rows_aligned() -> None:
    widths = [0, 0]
    assert plain_lines(["NAME", "PHASE"], [["a", "Pending"]], widths) == ["NAME   PHASE", "a      Pending"]
    # A later, wider row widens the column from then on; earlier widths are never narrowed.
    assert plain_lines(None, [["longer-name", "Running"]], widths) == ["longer-name   Running"]
    assert plain_lines(None, [["a", "Ok"]], widths) == ["a             Ok"]
    assert widths == [11, 7]
