"""The codec loses nothing it can see: a corpus of domain XMLs written after libvirt's and virt-manager's
test data (``corpus/``), each parsed, rendered and parsed again; what the model cannot carry is listed.

- representable documents: ``unrepresented`` is empty, parse -> render -> parse is stable, and every
  rendered XML passes libvirt's own schema check (``virt-xml-validate``);
- ``refused-*.xml``: ``unrepresented`` names the problem given in the file's ``<!-- expect: ... -->``.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from controller.adapters.libvirt.codec import parse_domain, render_domain, unrepresented
from reconcilers.domain import DomainName

CORPUS = Path(__file__).parent / "corpus"
GOOD = sorted(p for p in CORPUS.glob("*.xml") if not p.name.startswith("refused-"))
REFUSED = sorted(CORPUS.glob("refused-*.xml"))


def _validate(xml: str, tmp_path: Path) -> None:
    assert shutil.which("virt-xml-validate"), "virt-xml-validate (libvirt-clients) is installed by scripts/setup"
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    done = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{xml}"


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_corpus_round_trips_without_loss(path: Path, tmp_path: Path) -> None:
    xml = path.read_text()
    assert unrepresented(xml) == ()
    first, _ = parse_domain(xml)
    rendered = render_domain(first)
    again, _ = parse_domain(rendered)
    assert again == first
    assert render_domain(again) == rendered
    _validate(rendered, tmp_path)


@pytest.mark.parametrize("path", REFUSED, ids=lambda p: p.stem)
def test_unrepresentable_content_is_listed(path: Path) -> None:
    xml = path.read_text()
    expect = re.search(r"<!-- expect: (.*?) -->", xml)
    assert expect is not None, f"{path.name} says what it expects"
    problems = unrepresented(xml)
    assert problems, f"{path.name} must not be representable"
    assert any(expect.group(1) in p for p in problems), problems


def test_corpus_keeps_what_users_set() -> None:
    """Spot checks that the fields the issue names are modelled, not merely carried."""
    desktop, _ = parse_domain((CORPUS / "desktop-q35.xml").read_text())
    cdrom = next(d for d in desktop.disks if d.device == "cdrom")
    assert (cdrom.bus, cdrom.boot_order, cdrom.readonly) == ("sata", 3, True)
    vda = desktop.disk("vda")
    assert vda is not None and (vda.cache, vda.io, vda.discard) == ("none", "native", "unmap")
    assert [n.boot_order for n in desktop.nics] == [1]
    assert desktop.cpu_topology is not None and desktop.cpu_topology.threads == 2
    assert '<vmport state="off" />' in desktop.features
    server, _ = parse_domain((CORPUS / "server-pc.xml").read_text())
    assert server.memory_hotplug is not None and server.memory_hotplug.slots == 16
    assert server.memory_hotplug.max_kib == 32 * 1024 * 1024
    assert server.boot_devices == ("cdrom", "hd")
    assert [(f.policy, f.name) for f in server.cpu_features] == [("disable", "hle"), ("require", "pcid")]
    assert [d.device for d in server.disks] == ["disk", "cdrom", "floppy"]
    assert server.disks[1].source is None
    assert sum(1 for d in server.extra_devices if d.startswith("<serial")) == 1  # the second port
    assert "<on_crash>coredump-restart</on_crash>" in server.extra_elements


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_libvirt_accepts_the_rendering_and_its_echo_is_no_drift(path: Path) -> None:
    """libvirt (its test driver) defines each rendered corpus domain; reading it back differs in nothing the
    VM planner compares, so an adopted domain would not be redefined."""
    import uuid

    import libvirt

    from reconcilers.vm.domain import config_differences

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")
    try:
        config, _ = parse_domain(path.read_text())
        config = dataclasses.replace(config, name=DomainName(f"corpus-{uuid.uuid4().hex[:8]}"), uuid=None)
        dom = conn.defineXML(render_domain(config))
        try:
            echo, _ = parse_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))
            assert config_differences(config, echo) == ()
        finally:
            dom.undefine()
    finally:
        conn.close()
