"""API versions and the conversions between them. Pure.

Objects are stored and served in the *storage version* (``virtplane.io/v1``). An older version stays
readable: a document in it — a file being applied, or an object an older server stored in etcd — is
converted step by step (``from_version -> to_version``) until it reaches the storage version, before it is
validated. So a schema can change without a flag day: ship the new version, register a conversion from
the old one, and stored objects are converted when read (and written back in the new version at their next
change, or by ``virtplane backup`` / ``restore``).

One conversion ships as the worked example: ``virtplane.io/v1beta1`` VirtualMachines, whose ``cpu`` and
``memory`` were plain values (``cpu: 2``, ``memory: 2Gi``), become v1 (``cpu: {cores: 2}``,
``memory: {size: 2Gi}``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from specs.meta import API_VERSION

STORAGE_VERSION = API_VERSION
Document = dict[str, Any]


@dataclass(frozen=True)
class Conversion:
    """Turn a ``kind`` document (``"*"``: any kind) in ``from_version`` into ``to_version``."""

    kind: str
    from_version: str
    to_version: str
    convert: Callable[[Document], Document]


class Conversions:
    def __init__(self, conversions: tuple[Conversion, ...] = ()) -> None:
        self._by_key = {(c.kind, c.from_version): c for c in conversions}

    def with_(self, *more: Conversion) -> Conversions:
        return Conversions((*self._by_key.values(), *more))

    @property
    def versions(self) -> tuple[str, ...]:
        """Every version a document may come in (the storage version first)."""
        return (STORAGE_VERSION, *sorted({c.from_version for c in self._by_key.values()}))

    def upgrade(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        """``data`` in the storage version. A document already in it, or in a version nobody converts,
        comes back as it is (validation then says what is wrong with its apiVersion)."""
        version, kind = data.get("apiVersion"), data.get("kind")
        if version == STORAGE_VERSION or not isinstance(version, str) or not isinstance(kind, str):
            return data
        doc: Document = copy.deepcopy(dict(data))
        seen = set()
        while doc.get("apiVersion") != STORAGE_VERSION:
            version = doc.get("apiVersion")
            step = self._by_key.get((kind, str(version))) or self._by_key.get(("*", str(version)))
            if step is None or version in seen:
                return doc
            seen.add(version)
            doc = step.convert(doc)
            doc["apiVersion"] = step.to_version
        return doc


def _vm_v1beta1(doc: Document) -> Document:
    spec = dict(doc.get("spec") or {})
    if isinstance(spec.get("cpu"), int):
        spec["cpu"] = {"cores": spec["cpu"]}
    if isinstance(spec.get("memory"), str | int):
        spec["memory"] = {"size": spec["memory"]}
    return {**doc, "spec": spec}


CONVERSIONS = Conversions((Conversion("VirtualMachine", "virtplane.io/v1beta1", STORAGE_VERSION, _vm_v1beta1),))
