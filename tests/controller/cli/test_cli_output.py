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


def test_api_resources_lists_every_kind_and_the_names_get_accepts() -> None:
    """`virtplane api-resources` (as kubectl's): every kind with the names that resolve to it; each name it
    shows is accepted by the CLI's kind lookup. Runs the real entry point, no server."""
    import subprocess
    import sys
    from pathlib import Path

    from specs.kinds import KINDS, resolve_kind

    done = subprocess.run([str(Path(sys.executable).parent / "virtplane"), "api-resources"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SHORTNAMES", "SINGULAR", "KIND", "GITOPS"]
    rows = {line.split()[-2]: line.split() for line in lines[1:]}
    assert set(rows) == set(KINDS)
    vm = rows["VirtualMachine"]
    assert vm[0] == "virtualmachines" and vm[1] == "vm,vms" and vm[-1] == "yes"
    for kind, row in rows.items():
        names = [row[0], row[-3]] + (row[1].split(",") if len(row) == 5 else [])
        assert all(resolve_kind(n).kind == kind for n in names)
