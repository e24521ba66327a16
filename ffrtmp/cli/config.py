"""The CLI's saved settings (~/.config/ffrtmp/cli.json, 0600): what `ffrtmp up` writes so that
later commands find the fleet (URL, key, CA) without flags."""

from __future__ import annotations

import json
import os
from pathlib import Path


def cli_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "ffrtmp" / "cli.json"


def save_cli_config(url: str, api_key: str, ca_cert: str | None = None) -> Path:
    path = cli_config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "api_key": api_key, **({"ca_cert": ca_cert} if ca_cert else {})}, fh)
    return path


def load_cli_config() -> dict[str, str]:
    try:
        with open(cli_config_path()) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
