"""The package's version, which a run's files record (``checkpoint.versions``): one module below
every other, so that recording it imports nothing above (``pyproject.toml`` states it too; a test
holds the two equal)."""

__version__ = "0.1.0"
