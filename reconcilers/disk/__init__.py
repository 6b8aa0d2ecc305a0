"""Disk planning: the image of a Disk in its storage domain (create, clone, import, grow, delete)."""
