"""What comes from disk: dataset layouts, caption text, photos, shards, a split as arrays."""
