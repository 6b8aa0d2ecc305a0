"""`virtplane lab`: several libvirtd hosts on one machine, and the test guest they run.

- ``hosts``: ``Lab(dir).up(n) / down() / status() / power_off(name) / power_on(name)``.
- ``guest``: ``build_guest_image(dest_dir)``, ``probe_accel(image, cache_dir)``.
- ``cli``: the typer app mounted as ``virtplane lab``.
"""

from controller.dev.lab.guest import (
    DEVICES_MARKER,
    READY_MARKER,
    AccelProbe,
    GuestImage,
    GuestImageError,
    build_guest_image,
    probe_accel,
)
from controller.dev.lab.hosts import Lab, LabError, LabHost
from controller.dev.lab.paths import DEFAULT_LAB_DIR

__all__ = [
    "DEFAULT_LAB_DIR",
    "DEVICES_MARKER",
    "READY_MARKER",
    "AccelProbe",
    "GuestImage",
    "GuestImageError",
    "Lab",
    "LabError",
    "LabHost",
    "build_guest_image",
    "probe_accel",
]
