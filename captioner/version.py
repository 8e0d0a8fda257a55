"""captioner's version, in one place: the package, its run files, exports and light-export cache
names, the server's /api/health and pyproject.toml read it from here."""

__version__ = "0.1.0"
