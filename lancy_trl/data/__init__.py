"""Data: registry (one spec per dataset) -> loading (hub or local files) -> adapters (row -> chat) -> mixture."""
