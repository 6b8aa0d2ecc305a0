"""The Git side: loading a repository of YAML manifests with file:line errors, and exporting the store back into it."""
