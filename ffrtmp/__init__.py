"""ffrtmp: what the coordinator, the agent and the CLI share."""

from __future__ import annotations

from functools import cache


@cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # ~100 ms: only when asked

    try:
        return version("ffrtmp")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+src"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'ffrtmp' has no attribute {name!r}")
