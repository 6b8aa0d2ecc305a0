"""Actions on objects in the store (the VirtualMachinePool controller's family: its replicas)."""

from __future__ import annotations

from dataclasses import dataclass

from reconcilers.plan import Action, Impact
from specs.meta import Resource


def _refs(refs: tuple[tuple[str, str], ...]) -> str:
    shown = ", ".join(f"{kind.lower()}/{name}" for kind, name in refs[:4])
    return shown + (f" and {len(refs) - 4} more" if len(refs) > 4 else "")


@dataclass(frozen=True)
class ApplyObjects(Action):
    """Create or update objects owned by ``owner`` (kind/name), in one store transaction."""

    owner: str
    objects: tuple[Resource, ...]

    def target(self) -> str:
        return _refs(tuple((o.kind, o.metadata.name) for o in self.objects))


@dataclass(frozen=True)
class DeleteObjects(Action):
    """Delete objects owned by ``owner``; their controllers tear down what they made (finalizers)."""

    owner: str
    refs: tuple[tuple[str, str], ...]  # (kind, name)
    IMPACT = Impact.DESTRUCTIVE

    def target(self) -> str:
        return _refs(self.refs)
