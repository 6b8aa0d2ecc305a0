"""Cluster-wide planning: load balancing and power saving. Pure."""
