"""Where the lab keeps its state by default (no imports: the CLI shows these in --help)."""

from pathlib import Path

DEFAULT_LAB_DIR = Path("/var/lib/virtplane-lab")
DEFAULT_DIRECTORY_DIR = DEFAULT_LAB_DIR / "directory"
