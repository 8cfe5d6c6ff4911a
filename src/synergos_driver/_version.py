"""The package's version, read once from the installed distribution's metadata: pyproject.toml is
its only source, and everything else that shows a version imports `__version__` from here."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("synergos")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
