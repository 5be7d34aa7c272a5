"""The package version, in one place: the facade, the CLI and the layout cache's key read it."""

__version__ = "0.1.0"
