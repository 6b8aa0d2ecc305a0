"""Gluster volumes through the ``gluster`` CLI (script mode, ``--xml`` for what is parsed).

glusterd accepts changes only from its local CLI socket: ``--remote-host`` gives a read-only CLI
("GlusterD svc cli read-only", checked with glusterfs 10.3). So the server manages volumes through the
socket of a glusterd that is a member of the trusted pool (``virtplane server --glusterd-socket``; the
lab's: ``<lab>/storage/gluster/run/glusterd.socket``); bricks on other servers of the pool are reached by
that glusterd. Without a socket, volumes are observed read-only with ``--remote-host``.

Errors (the reconcile error tree)::

    TransientError   glusterd does not answer
    TerminalError    glusterd refused the operation (its message says why)
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import anyio

from controller.common.errors import TerminalError, TransientError
from reconcilers.gluster.plan import ObservedGlusterVolume

TIMEOUT = 120.0


@dataclass(frozen=True)
class BrickState:
    brick: str
    online: bool
    port: int | None
    pid: int | None


@dataclass(frozen=True)
class GlusterCli:
    socket: Path | None = None  # glusterd's CLI socket: read-write
    remote_host: str | None = None  # else: a glusterd over TCP, read-only
    log_file: Path | None = None

    @property
    def writable(self) -> bool:
        return self.socket is not None

    async def run(self, *args: str, xml: bool = False) -> str:
        argv = ["gluster", "--mode=script"]
        if self.socket is not None:
            argv.append(f"--glusterd-sock={self.socket}")
        elif self.remote_host is not None:
            argv.append(f"--remote-host={self.remote_host}")
        if self.log_file is not None:
            argv.append(f"--log-file={self.log_file}")
        argv += [*args, *(["--xml"] if xml else [])]
        with anyio.fail_after(TIMEOUT):
            done = await anyio.run_process(argv, check=False)
        out = done.stdout.decode(errors="replace")
        err = (done.stderr.decode(errors="replace") or out).strip()
        if "Connection failed" in err or "Cannot connect" in err:
            raise TransientError(f"glusterd does not answer ({_where(self)}): {err}", op=f"gluster {args[0]}")
        if xml:
            return out
        if done.returncode != 0:
            raise TerminalError(f"gluster {' '.join(args[:2])}: {err}", op=f"gluster {args[0]}")
        return out

    async def info(self, volume: str) -> ObservedGlusterVolume | None:
        root = _xml(await self.run("volume", "info", volume, xml=True), f"volume info {volume}")
        if root.findtext("opRet") != "0":
            if "does not exist" in (root.findtext("opErrstr") or ""):
                return None
            raise TerminalError(f"gluster volume info {volume}: {root.findtext('opErrstr')}", op="gluster volume")
        el = root.find("volInfo/volumes/volume")
        if el is None:
            return None
        return ObservedGlusterVolume(
            name=el.findtext("name") or volume, volume_id=el.findtext("id") or "",
            status=el.findtext("statusStr") or "", type=el.findtext("typeStr") or "",
            replica=int(el.findtext("replicaCount") or 1), arbiter=int(el.findtext("arbiterCount") or 0),
            bricks=tuple(b.findtext("name") or "" for b in el.iterfind("bricks/brick")),
            options={o.findtext("name") or "": o.findtext("value") or "" for o in el.iterfind("options/option")},
        )

    async def brick_states(self, volume: str) -> tuple[BrickState, ...]:
        """Bricks and whether each runs (``volume status``); () when the volume is not started."""
        root = _xml(await self.run("volume", "status", volume, xml=True), f"volume status {volume}")
        if root.findtext("opRet") != "0":
            return ()
        states = []
        for node in root.iterfind("volStatus/volumes/volume/node"):
            path = node.findtext("path") or ""
            if not path.startswith("/"):
                continue  # self-heal daemon and other services
            port, pid = node.findtext("port"), node.findtext("pid")
            states.append(BrickState(f"{node.findtext('hostname')}:{path}", node.findtext("status") == "1",
                                     int(port) if port and port.isdigit() else None,
                                     int(pid) if pid and pid.isdigit() else None))
        return tuple(states)

    async def create(self, volume: str, bricks: tuple[str, ...], replica: int, arbiter: bool, force: bool) -> None:
        layout = ["replica", str(replica)] + (["arbiter", "1"] if arbiter else []) if replica > 1 else []
        await self.run("volume", "create", volume, *layout, "transport", "tcp", *bricks, *(["force"] if force else []))

    async def start(self, volume: str) -> None:
        await self.run("volume", "start", volume)

    async def set_option(self, volume: str, key: str, value: str) -> None:
        await self.run("volume", "set", volume, key, value)

    async def add_bricks(self, volume: str, bricks: tuple[str, ...], replica: int, force: bool) -> None:
        layout = ["replica", str(replica)] if replica > 1 else []
        await self.run("volume", "add-brick", volume, *layout, *bricks, *(["force"] if force else []))

    async def stop_and_delete(self, volume: str) -> None:
        info = await self.info(volume)
        if info is None:
            return
        if info.status == "Started":
            await self.run("volume", "stop", volume)
        await self.run("volume", "delete", volume)


def _where(cli: GlusterCli) -> str:
    return f"socket {cli.socket}" if cli.socket is not None else f"host {cli.remote_host}"


def _xml(text: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise TransientError(f"gluster {what}: unreadable answer ({exc}): {text[:200]}", op="gluster") from exc
