"""The lab's test guest: a Debian cloud kernel plus a busybox initramfs, and the KVM/TCG probe.

``build_guest_image(dest_dir)`` downloads the current ``linux-image-*-cloud-amd64`` package with
``apt-get download``, unpacks it with ``dpkg-deb -x``, and writes into ``dest_dir/<kernel version>/``:

- ``vmlinuz``: the kernel, for direct kernel boot (``<os><kernel>``);
- ``initrd.img``: a gzip'd newc cpio whose ``/init`` (busybox sh) loads the virtio and ACPI button modules
  in dependency order (read from each module's ``depends=``), mounts proc/sys/devtmpfs, prints
  ``VIRTPLANE-GUEST-READY`` and the block and network devices on the console, then keeps running and
  prints a ``VIRTPLANE-DEVICES`` line whenever they change (so hot-plug/unplug is visible in the serial
  log and ACPI unplug requests are acknowledged by a live kernel);
- ``image.json``: what was built.

With ``virtplane.dirty=1`` on the kernel command line the guest also starts a memory dirtier that
rewrites ``virtplane.dirty_mb`` MiB (default 64) as fast as it can — a migration that cannot converge.

``probe_accel(image, cache_dir)`` boots the guest once with KVM and says "kvm" only if it got to
``/init``; otherwise "tcg". The answer is cached with its reason.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

READY_MARKER = "VIRTPLANE-GUEST-READY"
DEVICES_MARKER = "VIRTPLANE-DEVICES"
DISK_MARKER = "VIRTPLANE-DISK"  # "VIRTPLANE-DISK vda <first 16 bytes, hex>", once per disk at boot
POWEROFF_MARKER = "VIRTPLANE-GUEST-POWEROFF"  # the guest got the ACPI power button and powers off
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
# Modules the guest needs; their dependencies are added and ordered from the modules themselves.
WANTED_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "virtio_balloon", "button", "evdev")
BASE_CMDLINE = "console=ttyS0 panic=-1"
IMAGE_FORMAT = 2  # bump when the initramfs layout changes, so cached images are rebuilt

Accel = Literal["kvm", "tcg"]


class GuestImageError(Exception):
    """The test guest could not be built; the message names the failing step."""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    kernel_version: str
    modules: tuple[str, ...]
    cmdline: str = BASE_CMDLINE

    def cmdline_with(self, *, dirty_mb: int | None = None) -> str:
        """Kernel command line; ``dirty_mb`` turns on the memory dirtier."""
        if dirty_mb is None:
            return self.cmdline
        return f"{self.cmdline} virtplane.dirty=1 virtplane.dirty_mb={dirty_mb}"


@dataclass(frozen=True)
class AccelProbe:
    accel: Accel
    reason: str
    boot_seconds: float | None


INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in $(cat /etc/modules.order); do
    insmod "/lib/modules/$m.ko" || echo "virtplane-guest: insmod $m failed"
done
# ACPI power button (virsh shutdown, a graceful stop): busybox acpid runs /etc/acpi/PWRF/00000080.
acpid -c /etc/acpi -l /tmp/acpid.log -p /tmp/acpid.pid || echo "virtplane-guest: acpid failed"
# The first 16 bytes of every disk, so tests can tell which image (clone, copy, overlay) the guest sees.
for b in $(ls /sys/block | grep -e '^vd' -e '^sd'); do
    echo "VIRTPLANE-DISK $b $(head -c 16 "/dev/$b" | od -An -tx1 | tr -d ' \n')"
done
devices() {
    block=$(ls /sys/block | grep -v -e '^loop' -e '^ram' | tr '\n' ',')
    echo "block=$block net=$(ls /sys/class/net | tr '\n' ',')"
}
dirty=0; dirty_mb=64
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        virtplane.dirty=1) dirty=1 ;;
        virtplane.dirty_mb=*) dirty_mb="${arg#virtplane.dirty_mb=}" ;;
    esac
done
if [ "$dirty" = 1 ]; then
    /bin/dirtier "$dirty_mb" &
    echo "virtplane-guest: dirtying ${dirty_mb} MiB"
fi
seen="$(devices)"
echo "VIRTPLANE-GUEST-READY uptime=$(cut -d' ' -f1 /proc/uptime) $seen"
while true; do
    sleep 0.2
    now="$(devices)"
    if [ "$now" != "$seen" ]; then
        echo "VIRTPLANE-DEVICES $now"
        seen="$now"
    fi
done
"""

POWER_BUTTON_SCRIPT = r"""#!/bin/sh
echo "VIRTPLANE-GUEST-POWEROFF" >/dev/console
sync
poweroff -f
"""

DIRTIER_C = r"""
#include <stdlib.h>
#include <stdio.h>
int main(int argc, char **argv) {
    long mb = argc > 1 ? atol(argv[1]) : 64;
    size_t size = (size_t)mb << 20;
    volatile unsigned char *p = malloc(size);
    if (!p) { perror("dirtier: malloc"); return 1; }
    for (unsigned char round = 0;; round++)
        for (size_t i = 0; i < size; i += 4096)
            p[i] = round;
}
"""

# Fallback when no static C toolchain: a busybox loop that keeps rewriting a tmpfs file.
DIRTIER_SH = r"""#!/bin/sh
mb="${1:-64}"
mount -t tmpfs -o size=$((mb + 8))m tmpfs /mnt
while true; do dd if=/dev/urandom of=/mnt/dirty bs=1M count="$mb" 2>/dev/null; done
"""


# -- initramfs (cpio newc) -----------------------------------------------------------------------


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    fields = (1, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def build_cpio(entries: Iterable[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A newc cpio archive (what the kernel unpacks as initramfs) from (name, mode, data, rdev)."""
    body = b"".join(_cpio_entry(name, mode, data, rdev) for name, mode, data, rdev in entries)
    return body + _cpio_entry("TRAILER!!!", 0)


def _dir(name: str) -> tuple[str, int, bytes, tuple[int, int]]:
    return (name, stat.S_IFDIR | 0o755, b"", (0, 0))


def _file(name: str, data: bytes, perm: int = 0o755) -> tuple[str, int, bytes, tuple[int, int]]:
    return (name, stat.S_IFREG | perm, data, (0, 0))


# -- kernel modules --------------------------------------------------------------------------------


def _modinfo_depends(data: bytes) -> list[str]:
    marker = b"depends="
    start = data.find(b"\0" + marker)
    if start < 0:
        return []
    start += 1 + len(marker)
    value = data[start : data.index(b"\0", start)].decode()
    return [d for d in value.split(",") if d]


def _read_module(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(raw)
    if path.name.endswith(".gz"):
        return gzip.decompress(raw)
    return raw


def order_modules(module_dir: Path, wanted: Iterable[str]) -> list[tuple[str, bytes]]:
    """``wanted`` modules (those not built into the kernel) plus dependencies, dependencies first."""
    files: dict[str, Path] = {}
    for path in module_dir.rglob("*.ko*"):
        name = path.name.split(".ko")[0].replace("-", "_")
        files[name] = path
    builtin_file = module_dir / "modules.builtin"
    builtin = set()
    if builtin_file.exists():
        builtin = {
            Path(line).name.split(".ko")[0].replace("-", "_") for line in builtin_file.read_text().split()
        }
    ordered: list[tuple[str, bytes]] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in done or name in builtin:
            return
        if name in chain:
            raise GuestImageError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in files:
            raise GuestImageError(f"kernel module {name} not found under {module_dir} and not built in")
        data = _read_module(files[name])
        for dep in _modinfo_depends(data):
            visit(dep.replace("-", "_"), (*chain, name))
        done.add(name)
        ordered.append((name, data))

    for name in wanted:
        visit(name, ())
    return ordered


# -- build -----------------------------------------------------------------------------------------


def current_kernel_package() -> str:
    """The versioned kernel package the cloud meta-package points at, per apt-cache."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], "apt-cache depends")
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "Depends:" and parts[1].startswith("linux-image-"):
            return parts[1]
    raise GuestImageError(
        f"apt-cache depends {KERNEL_META_PACKAGE} names no linux-image package; apt-get update?"
    )


def _run(args: list[str], what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise GuestImageError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _build_dirtier(work: Path) -> tuple[bytes, str]:
    gcc = shutil.which("gcc")
    if gcc is not None:
        (work / "dirtier.c").write_text(DIRTIER_C)
        proc = subprocess.run(
            [gcc, "-static", "-O2", "-o", str(work / "dirtier"), str(work / "dirtier.c")],
            capture_output=True,
            check=False,
        )
        if proc.returncode == 0:
            return (work / "dirtier").read_bytes(), "c"
    return DIRTIER_SH.encode(), "sh"


def cached_guest_image(dest_dir: Path | str) -> GuestImage | None:
    """A previously built image under ``dest_dir`` (the newest), or None."""
    found: list[tuple[float, GuestImage]] = []
    for manifest in Path(dest_dir).glob("*/image.json"):
        try:
            meta = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            continue
        if meta.get("format") != IMAGE_FORMAT:
            continue
        image = GuestImage(
            kernel=manifest.parent / "vmlinuz",
            initrd=manifest.parent / "initrd.img",
            kernel_version=meta["kernel_version"],
            modules=tuple(meta["modules"]),
        )
        if image.kernel.exists() and image.initrd.exists():
            found.append((manifest.stat().st_mtime, image))
    return max(found, key=lambda item: item[0])[1] if found else None


def build_guest_image(dest_dir: Path | str, *, refresh: bool = False) -> GuestImage:
    """Build (or return the cached) test guest under ``dest_dir``. ``refresh`` looks for a newer kernel."""
    dest = Path(dest_dir).absolute()
    if not refresh:
        cached = cached_guest_image(dest)
        if cached is not None:
            return cached
    package = current_kernel_package()
    version = package.removeprefix("linux-image-")
    target = dest / version
    if (target / "image.json").exists() and not refresh:
        cached = cached_guest_image(dest)
        if cached is not None:
            return cached
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".build-") as tmp:
        work = Path(tmp)
        _run(["apt-get", "download", package], f"apt-get download {package}", cwd=work)
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise GuestImageError(f"apt-get download {package} left {len(debs)} .deb files in {work}")
        root = work / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(root)], "dpkg-deb -x")
        kernels = list((root / "boot").glob("vmlinuz-*"))
        if len(kernels) != 1:
            raise GuestImageError(f"{debs[0].name} holds {len(kernels)} vmlinuz files, expected 1")
        module_dirs = list((root / "lib" / "modules").iterdir())
        if len(module_dirs) != 1:
            raise GuestImageError(f"{debs[0].name} holds {len(module_dirs)} module trees, expected 1")
        modules = order_modules(module_dirs[0], WANTED_MODULES)
        busybox = shutil.which("busybox")
        if busybox is None:
            raise GuestImageError("busybox not found; install busybox-static")
        dirtier, dirtier_kind = _build_dirtier(work)
        dirs = ("bin", "dev", "etc", "etc/acpi", "etc/acpi/PWRF", "lib", "lib/modules", "mnt", "proc", "sys", "tmp")
        entries = [_dir(d) for d in dirs]
        entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)))
        entries.append(_file("bin/busybox", Path(busybox).read_bytes()))
        entries.append(("bin/sh", stat.S_IFLNK | 0o777, b"busybox", (0, 0)))
        entries.append(_file("bin/dirtier", dirtier))
        entries.append(_file("init", INIT_SCRIPT.encode()))
        entries.append(_file("etc/acpi/PWRF/00000080", POWER_BUTTON_SCRIPT.encode()))
        entries.append(_file("etc/modules.order", "".join(f"{n}\n" for n, _ in modules).encode(), 0o644))
        entries.extend(_file(f"lib/modules/{name}.ko", data, 0o644) for name, data in modules)
        staged = work / "out"
        staged.mkdir()
        (staged / "initrd.img").write_bytes(gzip.compress(build_cpio(entries), compresslevel=6, mtime=0))
        shutil.copyfile(kernels[0], staged / "vmlinuz")
        meta = {
            "format": IMAGE_FORMAT,
            "package": debs[0].name,
            "kernel_version": version,
            "modules": [n for n, _ in modules],
            "dirtier": dirtier_kind,
            "cmdline": BASE_CMDLINE,
        }
        (staged / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    image = cached_guest_image(dest)
    assert image is not None
    return image


# -- accelerator probe -----------------------------------------------------------------------------


def probe_accel(image: GuestImage, cache_dir: Path | str, *, timeout: float = 20.0) -> AccelProbe:
    """Boot ``image`` once with KVM; "kvm" only if /init printed the READY marker. Cached in cache_dir."""
    cache = Path(cache_dir) / "accel.json"
    if cache.exists():
        data = json.loads(cache.read_text())
        if data.get("kernel_version") == image.kernel_version:
            return AccelProbe(data["accel"], data["reason"], data["boot_seconds"])
    result = _probe_kvm(image, Path(cache_dir), timeout)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({**asdict(result), "kernel_version": image.kernel_version}, indent=2) + "\n")
    return result


def _probe_kvm(image: GuestImage, work: Path, timeout: float) -> AccelProbe:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelProbe("tcg", "/dev/kvm is missing or not accessible", None)
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise GuestImageError("qemu-system-x86_64 not found; install qemu-system-x86")
    work.mkdir(parents=True, exist_ok=True)
    log = work / "accel-probe.serial.log"
    log.unlink(missing_ok=True)
    args = [
        qemu, "-accel", "kvm", "-m", "256", "-nodefaults", "-no-reboot", "-display", "none",
        "-serial", f"file:{log}", "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", image.cmdline,
    ]  # fmt: skip
    qemu_log = work / "accel-probe.qemu.log"
    started = time.monotonic()
    with qemu_log.open("wb") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        deadline = started + timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if READY_MARKER in text:
                elapsed = time.monotonic() - started
                return AccelProbe("kvm", f"test guest reached /init under KVM in {elapsed:.1f} s", elapsed)
            errors = qemu_log.read_text(errors="replace")
            if proc.poll() is not None or "KVM internal error" in errors:
                first = next((ln for ln in errors.splitlines() if ln.strip()), f"exit {proc.returncode}")
                return AccelProbe("tcg", f"KVM boot of the test guest failed: {first.strip()}", None)
            time.sleep(0.1)
        return AccelProbe(
            "tcg", f"KVM boot of the test guest printed no {READY_MARKER} in {timeout:.0f} s", None
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
