"""libvirt's error text never carries a file's content into status (issue 9): opening a connection reports
only libvirt's error code, and other errors keep the first line, bounded."""

from pathlib import Path

import libvirt
import pytest

from controller.adapters.libvirt.connection import HostConnection
from controller.adapters.libvirt.errors import classify
from controller.common.errors import ConnectionLost


async def test_open_failure_does_not_quote_the_file(tmp_path: Path) -> None:
    # A test-driver URI naming a file makes libvirt parse it; the parser's message quotes the content.
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$SECRETHASH:19000:0:99999:7:::\n")
    with pytest.raises(libvirt.libvirtError) as direct:
        libvirt.open(f"test://{secret}")
    assert "SECRETHASH" in str(direct.value) or "root" in str(direct.value)  # what the old code copied
    conn = HostConnection("h", f"test://{secret}")
    with pytest.raises(ConnectionLost) as caught:
        await conn.open()
    text = str(caught.value)
    assert "SECRETHASH" not in text and "root:" not in text and str(secret) not in text
    assert "VIR_ERR_" in text and "server log" in text


def test_other_errors_keep_one_bounded_line() -> None:
    libvirt.virResetLastError()  # a libvirtError made here takes its text from libvirt's last error
    exc = libvirt.libvirtError("first line\nroot:$6$SECRETHASH:19000\n" + "x" * 1000)
    assert classify(exc).message == "first line"
    long = libvirt.libvirtError("y" * 1000)
    assert len(classify(long).message) <= 300
