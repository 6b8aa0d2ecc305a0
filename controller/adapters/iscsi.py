"""iSCSI LUNs probed from the server with QEMU's own initiator (libiscsi, through ``qemu-img info``), so no
kernel initiator is needed and the check is the one QEMU on the hosts will make.

The CHAP password never reaches a command line: it is written to a private temporary file (0600, in a 0700
directory) that ``qemu-img`` reads as a secret object, and removed at once. Error text is redacted.

A failed probe raises :class:`LunProblem` with a typed ``reason`` (decisions are made on it; the message is
for people). libiscsi says what went wrong only in text, so this module is the one place that reads it:

    PortalUnreachable   nothing answers at the portal (or not within the timeout)
    LoginFailed         CHAP refused: wrong user name or password, or CHAP missing where the target wants it
    TargetNotFound      the portal does not serve that IQN
    LunNotFound         the target has no such LUN
    ProbeFailed         anything else (the message says what)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import anyio

from controller.adapters.secrets import Secret, redact

PROBE_TIMEOUT = 20.0


class LunReason(StrEnum):
    PORTAL_UNREACHABLE = "PortalUnreachable"
    LOGIN_FAILED = "LoginFailed"
    TARGET_NOT_FOUND = "TargetNotFound"
    LUN_NOT_FOUND = "LunNotFound"
    PROBE_FAILED = "ProbeFailed"


class LunProblem(Exception):
    def __init__(self, reason: LunReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class LunTarget:
    host: str
    port: int
    iqn: str
    lun: int
    username: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"iscsi://{host}:{self.port}/{self.iqn}/{self.lun}"


_PATTERNS: tuple[tuple[str, LunReason], ...] = (
    ("Authentication failure", LunReason.LOGIN_FAILED),
    ("Target not found", LunReason.TARGET_NOT_FOUND),
    ("LOGICAL_UNIT_NOT_SUPPORTED", LunReason.LUN_NOT_FOUND),
    ("iscsi_service failed", LunReason.PORTAL_UNREACHABLE),
    ("Connection refused", LunReason.PORTAL_UNREACHABLE),
    ("No route to host", LunReason.PORTAL_UNREACHABLE),
    ("Name or service not known", LunReason.PORTAL_UNREACHABLE),
)

_HINTS = {
    LunReason.LOGIN_FAILED: "CHAP login refused: check chapUsername and the password in chapSecret",
    LunReason.TARGET_NOT_FOUND: "the portal does not serve this iqn",
    LunReason.LUN_NOT_FOUND: "the target has no such lun",
    LunReason.PORTAL_UNREACHABLE: "nothing answers at the portal",
}


def classify(stderr: str) -> LunReason:
    """The reason for a failed probe, from libiscsi's text (the only place that reads it)."""
    return next((reason for needle, reason in _PATTERNS if needle in stderr), LunReason.PROBE_FAILED)


async def probe_lun(target: LunTarget, password: Secret | None, timeout: float = PROBE_TIMEOUT) -> int:
    """Log in to the target and read the LUN's size in bytes; LunProblem says why not."""
    opts = (f"driver=iscsi,transport=tcp,portal={_portal(target)},target={target.iqn},lun={target.lun}")
    with tempfile.TemporaryDirectory(prefix="vp-chap-") as tmp:
        args = ["qemu-img", "info", "--output=json"]
        if password is not None and target.username is not None:
            secret_file = Path(tmp) / "password"
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password.reveal())
            args += ["--object", f"secret,id=chap,file={secret_file}"]
            opts += f",user={target.username},password-secret=chap"
        args += ["--image-opts", opts]
        with anyio.move_on_after(timeout) as scope:
            result = await anyio.run_process(args, check=False, env={**os.environ, "LC_ALL": "C"})
    if scope.cancelled_caught:
        raise LunProblem(LunReason.PORTAL_UNREACHABLE, f"{target.url}: no answer within {timeout:g} s")
    if result.returncode != 0:
        err = redact(result.stderr.decode(errors="replace").strip(), password)
        err = err.split("': ", 1)[-1]  # drop qemu-img's echo of the options
        reason = classify(err)
        hint = _HINTS.get(reason)
        raise LunProblem(reason, f"{target.url}: {hint + ' (' + err + ')' if hint else err}")
    return int(json.loads(result.stdout)["virtual-size"])


def _portal(target: LunTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{host}:{target.port}"
