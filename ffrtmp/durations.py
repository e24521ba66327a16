"""Go-style durations ("10s", "1m30s", "500ms", "2h") for flags inherited from the Go system."""

from __future__ import annotations

import re

import click

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | float | int) -> float:
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)  # a bare number is seconds
        except ValueError:
            pos, seconds = 0, 0.0
            for m in _PART.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if pos != len(text) or not text:
                raise ValueError(f"'{value}' is not a duration (examples: 30s, 1m30s, 500ms, 2h)") from None
    if seconds < 0:
        raise ValueError(f"'{value}' is negative")
    return seconds


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()
