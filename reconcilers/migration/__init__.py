"""Live migration planning: when a running VM moves, where to, and what to do when it does not converge."""
