"""ffrtmp: what the coordinator, the agent and the CLI share."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ffrtmp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"
