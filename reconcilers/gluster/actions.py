"""Actions on Gluster volumes (the GlusterVolume controller's family), carried out through glusterd."""

from __future__ import annotations

from dataclasses import dataclass

from reconcilers.plan import Action, Impact


@dataclass(frozen=True)
class CreateGlusterVolume(Action):
    volume: str
    bricks: tuple[str, ...]  # host:path
    replica: int = 1
    arbiter: bool = False
    force: bool = False

    def target(self) -> str:
        layout = "distribute"
        if self.replica > 1:
            layout = f"replica {self.replica}" + (" arbiter 1" if self.arbiter else "")
        return f"{self.volume} ({layout}: {' '.join(self.bricks)})"


@dataclass(frozen=True)
class StartGlusterVolume(Action):
    volume: str

    def target(self) -> str:
        return self.volume


@dataclass(frozen=True)
class SetGlusterOption(Action):
    volume: str
    key: str
    value: str
    IMPACT = Impact.LIVE  # clients pick up the new volume graph without remounting

    def target(self) -> str:
        return f"{self.volume} {self.key}={self.value}"


@dataclass(frozen=True)
class AddGlusterBricks(Action):
    volume: str
    bricks: tuple[str, ...]
    replica: int = 1
    force: bool = False
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.volume} + {' '.join(self.bricks)}"


@dataclass(frozen=True)
class DeleteGlusterVolume(Action):
    """Stop and delete the volume (the bricks' directories and data stay on the servers)."""

    volume: str
    IMPACT = Impact.DESTRUCTIVE

    def target(self) -> str:
        return self.volume
