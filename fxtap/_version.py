"""fxtap's version, in one place for the package, saved files and stores."""

__version__ = "0.1.0"
