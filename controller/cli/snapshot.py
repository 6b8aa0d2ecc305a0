"""`virtplane snapshot revert NAME`: an imperative request the Snapshot controller acts on.

The CLI sets the annotation ``virtplane.io/revert-requested: <UTC timestamp>`` on the Snapshot and waits
until status.lastRevert answers that value (Succeeded: exit 0; Failed or timeout: exit 1).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from controller.cli.common import EXIT_INVALID, client, fail, reporting
from controller.cli.output import out
from controller.client.errors import NotFound

app = typer.Typer(help="Snapshots: revert a VM to one.", no_args_is_help=True)
EXIT_FAILED = 1


@app.command()
def revert(
    name: Annotated[str, typer.Argument(help="Snapshot to revert its VM to.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the controller.")] = 300.0,
    wait: Annotated[bool, typer.Option(help="Wait for the outcome (default) or return at once.")] = True,
) -> None:
    """Revert the Snapshot's VM to it: the guest's current state is lost."""
    vp = client()
    requested = datetime.now(UTC).isoformat(timespec="microseconds")
    with reporting():
        try:
            obj = vp.get("Snapshot", name)
        except NotFound:
            fail(f"snapshot {name} not found", EXIT_INVALID)
        body: dict[str, Any] = {k: v for k, v in obj.items() if k not in ("status",)}
        meta = dict(body["metadata"])
        from reconcilers.snapshot.plan import REVERT_ANNOTATION  # the planner's modules: only when reverting

        meta["annotations"] = {**(meta.get("annotations") or {}), REVERT_ANNOTATION: requested}
        body["metadata"] = meta
        vp.put(body)
    out.print(f"snapshot/{name}: revert requested ({requested})")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = vp.get("Snapshot", name).get("status") or {}
        last = status.get("lastRevert") or {}
        if last.get("requested") == requested and last.get("phase") in ("Succeeded", "Failed"):
            if last["phase"] == "Succeeded":
                out.print(f"snapshot/{name}: {last.get('message', 'reverted')} in {last.get('seconds')} s")
                return
            fail(f"snapshot/{name}: revert failed: {last.get('message', '')}", EXIT_FAILED)
        time.sleep(0.2)
    fail(f"snapshot/{name}: no answer from the controller within {timeout:.0f} s (is it running?)", EXIT_FAILED)
