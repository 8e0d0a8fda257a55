"""The Python API, `captioner caption` and `evaluate`, metrics and reports."""
