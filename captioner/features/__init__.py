"""The extract stage: image encoders, the feature cache, and `captioner extract`."""
