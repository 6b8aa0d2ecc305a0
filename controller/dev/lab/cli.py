"""`virtplane lab ...`: start, inspect, power-cycle and stop lab hosts on this machine (root)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

from controller.dev.lab import directory_cli
from controller.dev.lab.paths import DEFAULT_LAB_DIR

if TYPE_CHECKING:  # imported where used, so that `virtplane --help` starts fast
    from controller.dev.lab.hosts import LabHost

API_VERSION = "virtplane.io/v1"
STORAGE_DOMAIN_NAME = "lab-shared"

app = typer.Typer(no_args_is_help=True, help="A multi-host libvirt lab on this machine (needs root).")

DirOption = Annotated[
    Path, typer.Option("--dir", help="Lab state directory (per-host dirs, shared storage, guest image).")
]

CapsOption = Annotated[
    Path | None,
    typer.Option(
        help="QEMU capabilities cache shared by the hosts (default <dir>/qemu-caps); saves ~8 s a host."
    ),
]


ACCEL_ANNOTATION = "virtplane.io/accelerator"


def lab_manifests(
    hosts: list[LabHost], shared_dir: Path, cluster: str, accel: str | None = None
) -> list[dict[str, Any]]:
    """Host and StorageDomain resources describing the lab, ready for `virtplane apply`. ``accel``
    ("kvm" or "tcg") goes into each Host's virtplane.io/accelerator annotation."""
    meta = {"annotations": {ACCEL_ANNOTATION: accel}} if accel else {}
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": API_VERSION,
            "kind": "Host",
            "metadata": {"name": host.name, **meta},
            "spec": {"cluster": cluster, "uri": host.uri, "powerManagement": {"agent": "lab"}},
        }
        for host in hosts
    ]
    docs.append(
        {
            "apiVersion": API_VERSION,
            "kind": "StorageDomain",
            "metadata": {"name": STORAGE_DOMAIN_NAME},
            "spec": {"cluster": cluster, "type": "posix", "posix": {"path": str(shared_dir)}, "shared": True},
        }
    )
    return docs


def render_manifests(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, explicit_start=True)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise typer.BadParameter("the lab mounts and runs libvirtd as root; run it as root")


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(1)


@app.command()
def up(
    hosts: Annotated[int, typer.Option("--hosts", "-n", min=1, help="Number of hosts (lab-1..lab-N).")] = 2,
    directory: DirOption = DEFAULT_LAB_DIR,
    cluster: Annotated[str, typer.Option(help="Cluster name written into the printed manifests.")] = "lab",
    qemu_caps_dir: CapsOption = None,
    accel: Annotated[
        str, typer.Option(help="auto: probe-boot the test guest with KVM (cached) and fall back to tcg; or kvm/tcg.")
    ] = "auto",
    lock_manager: Annotated[
        bool | None,
        typer.Option(
            "--lock-manager/--no-lock-manager",
            help="virtlockd + lockd disk leases in <dir>/lockspace on every host (default: as last started).",
        ),
    ] = None,
    storage: Annotated[
        str, typer.Option(help="Storage servers to start too, any of nfs,gluster,iscsi (comma-separated).")
    ] = "",
) -> None:
    """Start hosts lab-1..lab-N (those not running yet) and print their Host/StorageDomain YAML."""
    from controller.dev.lab.guest import GuestImageError, build_guest_image, probe_accel
    from controller.dev.lab.hosts import Lab, LabError
    from controller.dev.lab.storage import IscsiServer, LabStorage, StorageError, parse_storage_kinds, storage_manifests
    from controller.dev.lab.storage.manifests import ISCSI_DISK, install_chap_secret
    from controller.dev.lab.storage.manifests import status_lines as storage_status_lines

    _need_root()
    if accel not in ("auto", "kvm", "tcg"):
        raise typer.BadParameter("--accel is auto, kvm or tcg")
    try:
        storage_kinds = parse_storage_kinds(storage)
    except StorageError as err:
        raise typer.BadParameter(str(err)) from err
    if accel == "auto":
        try:
            probe = probe_accel(build_guest_image(directory / "guest"), directory / "guest")
        except GuestImageError as err:
            raise _fail(err) from err
        accel = probe.accel
        typer.echo(f"# accelerator: {accel} ({probe.reason})", err=True)
    lab = Lab(directory, qemu_caps_dir=qemu_caps_dir, lock_manager=lock_manager)
    try:
        started = lab.up(hosts)
    except LabError as err:
        raise _fail(err) from err
    for host in started:
        typer.echo(f"# {host.name}: libvirtd pid {host.pid}, {host.uri}", err=True)
    docs = lab_manifests(started, lab.shared_dir, cluster, accel)
    # -- storage servers (controller/dev/lab/storage) --
    if storage_kinds:
        try:
            servers = LabStorage(directory).up(storage_kinds)
        except StorageError as err:
            raise _fail(err) from err
        for line in storage_status_lines(servers)[1:]:
            typer.echo(f"# {line}", err=True)
        for server in servers:
            if isinstance(server, IscsiServer):
                secrets = install_chap_secret(server, directory / "storage" / "secrets").parent
                typer.echo(f"# CHAP password of {ISCSI_DISK} in {secrets}: run the server with --secrets-dir "
                           f"{secrets}", err=True)
        docs += storage_manifests(servers, cluster)
    sys.stdout.write(render_manifests(docs))


@app.command()
def down(directory: DirOption = DEFAULT_LAB_DIR) -> None:
    """Stop every lab host: its QEMU processes, its libvirtd, and with them its mounts; their BMCs; then the
    storage servers (after their clients)."""
    from controller.dev.lab.bmc import LabBmc
    from controller.dev.lab.hosts import Lab, LabError
    from controller.dev.lab.storage import LabStorage, StorageError

    _need_root()
    lab = Lab(directory)
    bmcs = directory / "bmc"
    for name in sorted(p.name for p in bmcs.iterdir()) if bmcs.is_dir() else ():
        LabBmc(lab, name, port=0, users=[]).stop()
    try:
        lab.down()
        LabStorage(directory).down()
    except (LabError, StorageError) as err:
        raise _fail(err) from err


@app.command()
def status(directory: DirOption = DEFAULT_LAB_DIR) -> None:
    """One line per host: name, state, libvirtd pid, QEMU pids, URI."""
    from controller.dev.lab.hosts import Lab
    from controller.dev.lab.storage import LabStorage
    from controller.dev.lab.storage.manifests import status_lines as storage_status_lines

    hosts = Lab(directory).status()
    servers = LabStorage(directory).status()
    if not hosts and not servers:
        typer.echo(f"no lab under {directory}")
        return
    if hosts:
        typer.echo(f"{'NAME':<8} {'STATE':<8} {'PID':>7}  {'QEMU':<16} URI")
    for host in hosts:
        state = "running" if host.running else "off"
        qemus = ",".join(map(str, host.qemu_pids)) or "-"
        typer.echo(f"{host.name:<8} {state:<8} {host.pid or '-':>7}  {qemus:<16} {host.uri}")
    if servers:
        typer.echo("\n".join(storage_status_lines(servers)))


@app.command("power-off")
def power_off(host: str, directory: DirOption = DEFAULT_LAB_DIR) -> None:
    """SIGKILL the host's libvirtd and QEMU processes, like pulling its plug."""
    from controller.dev.lab.hosts import Lab, LabError

    _need_root()
    try:
        Lab(directory).power_off(host)
    except LabError as err:
        raise _fail(err) from err


@app.command("power-on")
def power_on(host: str, directory: DirOption = DEFAULT_LAB_DIR, qemu_caps_dir: CapsOption = None) -> None:
    """Start a powered-off host again (its guests stay off, as after a real power loss)."""
    from controller.dev.lab.hosts import Lab, LabError

    _need_root()
    try:
        state = Lab(directory, qemu_caps_dir=qemu_caps_dir).power_on(host)
    except LabError as err:
        raise _fail(err) from err
    typer.echo(f"{state.name}: libvirtd pid {state.pid}, {state.uri}")


@app.command("guest-image")
def guest_image(
    directory: DirOption = DEFAULT_LAB_DIR,
    refresh: Annotated[bool, typer.Option(help="Look for a newer kernel package.")] = False,
    probe: Annotated[bool, typer.Option(help="Also probe whether the guest boots under KVM.")] = True,
) -> None:
    """Build (or reuse) the test guest: Debian cloud kernel + busybox initramfs, under <dir>/guest."""
    from controller.dev.lab.guest import GuestImageError, build_guest_image, probe_accel

    try:
        image = build_guest_image(directory / "guest", refresh=refresh)
    except GuestImageError as err:
        raise _fail(err) from err
    typer.echo(f"kernel:  {image.kernel}")
    typer.echo(f"initrd:  {image.initrd}")
    typer.echo(f"cmdline: {image.cmdline}")
    typer.echo(f"modules: {' '.join(image.modules)}")
    if probe:
        result = probe_accel(image, directory / "guest")
        typer.echo(f"accel:   {result.accel} ({result.reason})")


@app.command("bmc")
def bmc(
    host: str,
    port: Annotated[int, typer.Option(help="UDP port of the simulated BMC on 127.0.0.1.")],
    user: Annotated[str, typer.Option(help="BMC user name.")] = "admin",
    password_file: Annotated[
        Path | None, typer.Option(help="File whose first line is the BMC password (never on the command line).")
    ] = None,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the host's BMC instead.")] = False,
    directory: DirOption = DEFAULT_LAB_DIR,
    qemu_caps_dir: CapsOption = None,
) -> None:
    """An IPMI BMC (OpenIPMI ipmi_sim) for HOST whose chassis power is the lab's power switch."""
    from controller.dev.lab.bmc import BmcUser, LabBmc
    from controller.dev.lab.hosts import Lab, LabError

    _need_root()
    lab = Lab(directory, qemu_caps_dir=qemu_caps_dir)
    if stop:
        LabBmc(lab, host, port=port, users=[]).stop()
        return
    if password_file is None:
        raise typer.BadParameter("--password-file is required to start a BMC")
    password = password_file.read_text().splitlines()[0]
    try:
        lab.host(host)
        pid = LabBmc(lab, host, port=port, users=[BmcUser(user, password)]).start()
    except LabError as err:
        raise _fail(err) from err
    typer.echo(f"{host}: ipmi_sim pid {pid} on udp 127.0.0.1:{port}; fence_ipmilan stdin: "
               f"ip=127.0.0.1 ipport={port} username={user} lanplus=1 cipher=3 password=...")


app.add_typer(directory_cli.app, name="directory")
