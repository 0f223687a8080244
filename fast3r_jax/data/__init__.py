"""Multi-view data sources in the shared sample format (one list of view dicts per scene)."""
