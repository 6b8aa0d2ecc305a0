"""qemu-img adapter, with the real qemu-img and a real HTTP server: formats honoured, progress reported,
missing / corrupt / mismatched / 404 sources are typed errors; `qemu-img compare` confirms the content."""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.adapters import images
from tests.threadrun import run_in_thread


def _img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("images")
    raw = d / "seed.raw"
    _img("create", "-q", "-f", "raw", str(raw), "8M")
    with open(raw, "r+b") as f:  # recognisable content at a few offsets
        for offset in (0, 3 << 20, (8 << 20) - 512):
            f.seek(offset)
            f.write(b"VIRTPLANE-IMPORT-" + str(offset).encode())
    for fmt in ("vmdk", "vdi", "vhdx", "vpc", "qcow2"):
        _img("convert", "-f", "raw", "-O", fmt, str(raw), str(d / f"seed.{fmt}"))
    (d / "garbage.qcow2").write_bytes(b"not an image at all\n" * 100)
    broken = d / "broken.qcow2"
    broken.write_bytes((d / "seed.qcow2").read_bytes())
    with open(broken, "r+b") as f:  # the header's L1 table offset (bytes 40..47) made unaligned
        f.seek(40)
        f.write((12345).to_bytes(8, "big"))
    return d


_run = run_in_thread


@pytest.mark.parametrize("fmt", ["vmdk", "vdi", "vhdx", "vpc", "qcow2"])
def test_each_format_converts_to_qcow2_with_progress_and_identical_content(
    source_dir: Path, tmp_path: Path, fmt: str
) -> None:
    src = str(source_dir / f"seed.{fmt}")
    seen: list[int] = []

    async def progress(p: int) -> None:
        seen.append(p)

    async def go() -> None:
        info = await images.image_info(src, fmt)
        assert info.format == fmt and info.virtual_size >= 8 << 20
        await images.convert(src, info.format, str(tmp_path / "out.qcow2"), "qcow2", progress)
        await images.check(str(tmp_path / "out.qcow2"), "qcow2")

    _run(go)
    assert seen and seen[-1] == 100 and seen == sorted(seen)
    assert '"format": "qcow2"' in _img("info", "--output=json", str(tmp_path / "out.qcow2"))
    # somebody else's tool says the guest-visible content is the same
    _img("compare", "-f", "raw", "-F", "qcow2", str(source_dir / "seed.raw"), str(tmp_path / "out.qcow2"))


def test_a_declared_format_that_does_not_match_is_refused(source_dir: Path) -> None:
    with pytest.raises(images.ImageError) as info:
        _run(images.image_info, str(source_dir / "seed.qcow2"), "vmdk")
    assert info.value.reason == "FormatMismatch" and "declared vmdk but qemu-img finds qcow2" in str(info.value)


def test_missing_and_corrupt_sources_are_typed(source_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(images.ImageError) as missing:
        _run(images.image_info, str(tmp_path / "nonexistent.vmdk"), "vmdk")
    assert missing.value.reason == "SourceMissing"
    with pytest.raises(images.ImageError) as corrupt:
        _run(images.image_info, str(source_dir / "broken.qcow2"), "qcow2")
    assert corrupt.value.reason == "SourceCorrupt", corrupt.value
    with pytest.raises(images.ImageError) as garbage:
        _run(images.image_info, str(source_dir / "garbage.qcow2"), "qcow2")
    assert garbage.value.reason == "FormatMismatch" and "finds raw" in str(garbage.value)


@pytest.fixture
def http_root(source_dir: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(source_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_reports_progress_and_a_404_is_unreachable(http_root: str, tmp_path: Path) -> None:
    seen: list[int] = []

    async def progress(p: int) -> None:
        seen.append(p)

    dest = tmp_path / "dl.vmdk"
    _run(images.download, f"{http_root}/seed.vmdk", dest, progress)
    assert dest.exists() and seen and seen[-1] == 100
    assert _run(images.image_info, str(dest), "vmdk").format == "vmdk"
    with pytest.raises(images.ImageError) as gone:
        _run(images.download, f"{http_root}/missing.vmdk", tmp_path / "x.vmdk", progress)
    assert gone.value.reason == "SourceUnreachable" and "HTTP 404" in str(gone.value)
    assert not (tmp_path / "x.vmdk").exists() and not (tmp_path / "x.vmdk.part").exists()
