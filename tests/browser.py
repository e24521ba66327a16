"""A real headless Chromium (Debian's package) driven over the DevTools protocol, for tests of
the web console: navigate, evaluate JavaScript in the page, read cookies, take screenshots.
Nothing but aiohttp's websocket client is used to talk to it."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import require


class Browser:
    def __init__(self, tmp: Path) -> None:
        self.proc = subprocess.Popen(
            [
                require("chromium"),
                "--headless=new",
                "--no-sandbox",  # tests may run as root, where Chromium's sandbox refuses to start
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--remote-debugging-port=0",
                f"--user-data-dir={tmp / 'chromium'}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError("chromium exited before it listened")
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            port = int(m.group(1)) if m else None
        if port is None:
            raise RuntimeError("chromium never said where DevTools listens")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        self.loop = asyncio.new_event_loop()
        self._ids = itertools.count(1)
        self.session = self.loop.run_until_complete(self._session())
        self.ws = self.loop.run_until_complete(
            self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        )

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        async def call() -> dict[str, Any]:
            mid = next(self._ids)
            await self.ws.send_json({"id": mid, "method": method, "params": params})
            while True:
                msg = await asyncio.wait_for(self.ws.receive_json(), 60)
                if msg.get("id") == mid:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg.get("result", {})

        return self.loop.run_until_complete(call())

    def eval(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Until ``expression`` is truthy in the page (evaluated every 0.2 s); its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.eval(expression)
            except RuntimeError:  # the page is between documents
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"never true: {expression}\npage: {self.eval('document.body.innerText')}"
                )
            time.sleep(0.2)

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href.startsWith({json.dumps(url.split('?')[0])}) || location.pathname")
        self.wait_for("document.readyState === 'complete'")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.loop.run_until_complete(self.ws.close())
        self.loop.run_until_complete(self.session.close())
        self.loop.close()
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
