"""GlusterVolume planning: create, start, set options, add bricks, delete (when no domain uses it)."""
