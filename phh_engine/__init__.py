"""phh engine: runs store, submit, scheduler, runner and scoreboards. Imports no UI code."""

__version__ = "0.1.0"
