"""StorageDomain planning, and the storage backends (one place per storage type)."""
