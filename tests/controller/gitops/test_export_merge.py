"""update_document: export into a checkout changes nothing that still means the same, and keeps comments
on their keys when something did change."""

from __future__ import annotations

import io
import json
from typing import Any

from ruamel.yaml import YAML

from controller.common.wire import spec_to_wire
from controller.gitops.export import update_document
from specs.kinds import parse_resource

TEXT = """\
# the web server
apiVersion: virtplane.io/v1
kind: VirtualMachine
metadata:
  name: web-1
spec:
  cluster: main
  # keep it running
  runStrategy: Always
  cpu:
    cores: 2
    # hot-plug up to four
    maxCores: 4
  memory:
    size: 1024Mi  # one gig
  highAvailability:
    enabled: false
    priority: 50
  disks:
    # the root disk
    - disk: root
      bootOrder: 1
    # scratch space
    - disk: scratch
  nics:
    - name: lan
      network: lan
      model: virtio
"""


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _export(text: str, changes: dict[str, Any] | None = None) -> str:
    yaml = _yaml()
    doc = yaml.load(text)
    data = yaml.load(text)
    plain = json.loads(json.dumps(data))
    for path, value in (changes or {}).items():
        node = plain
        *parents, last = path.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is None and isinstance(node, list):
            del node[int(last)]
        elif value is None:
            del node[last]
        else:
            node[last] = value
    want = parse_resource(plain)
    compact = spec_to_wire(want)
    assert compact is not None
    out = io.StringIO()
    yaml.dump(update_document(doc, compact, want), out)
    return out.getvalue()


def test_unchanged_object_is_byte_identical_defaults_and_spelling_kept() -> None:
    assert _export(TEXT) == TEXT


def test_a_change_touches_one_value_and_every_comment_stays_on_its_key() -> None:
    out = _export(TEXT, {"spec.cpu.cores": 3})
    assert out == TEXT.replace("    cores: 2\n", "    cores: 3\n")


def test_removed_list_item_takes_its_comment_and_defaults_stay() -> None:
    out = _export(TEXT, {"spec.disks.1": None})
    assert out == TEXT.replace("    # scratch space\n    - disk: scratch\n", "")
    assert "runStrategy: Always" in out and "priority: 50" in out


def test_a_default_changed_to_another_value_is_written_and_one_changed_back_to_default_goes() -> None:
    out = _export(TEXT, {"spec.runStrategy": "Manual"})
    assert out == TEXT.replace("runStrategy: Always", "runStrategy: Manual")
    out = _export(TEXT.replace("priority: 50", "priority: 80"), {"spec.highAvailability.priority": 50})
    assert "highAvailability" not in out and "priority" not in out  # the store holds the defaults


def test_a_removed_key_takes_the_comment_above_it() -> None:
    out = _export(TEXT, {"spec.cpu.maxCores": None})
    assert out == TEXT.replace("    # hot-plug up to four\n    maxCores: 4\n", "")
