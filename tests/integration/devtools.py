"""Headless Chromium driven over the DevTools protocol (a websocket), for tests that need
layout: a page at a chosen viewport (a phone's, with mobile emulation), values computed
by the browser, full-page screenshots.

    with headless_chromium(tmp_path) as browser:
        page = browser.open_page()
        page.emulate(width=390, height=844, mobile=True)
        page.navigate("https://127.0.0.1:8002/status")
        width = page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(tmp_path / "phone.png")
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from processes import LOOPBACK, HarnessError, ManagedProcess, http_client, start_on_free_port
from websockets.sync.client import ClientConnection, connect

CALL_TIMEOUT = 60.0  # one DevTools call or page load, on a loaded 2-core machine


def find_chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise HarnessError("chromium is not installed (apt-get install chromium)")
    return found


class Page:
    """One tab: DevTools calls answered in order, events kept until asked for."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._last_id = 0
        self._events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._last_id += 1
        call_id = self._last_id
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + CALL_TIMEOUT
        while True:
            message = self._receive(deadline, method)
            if message.get("id") == call_id:
                if "error" in message:
                    raise HarnessError(f"DevTools {method} failed: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self._events.append(message)

    def wait_for_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + CALL_TIMEOUT
        while True:
            for event in self._events:
                if event["method"] == method:
                    self._events.remove(event)
                    return event
            message = self._receive(deadline, method)
            if "method" in message:
                self._events.append(message)

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HarnessError(f"Chromium did not answer {waiting_for} in {CALL_TIMEOUT:.0f} s")
        try:
            raw = self._socket.recv(timeout=remaining)
        except TimeoutError:
            raise HarnessError(
                f"Chromium did not answer {waiting_for} in {CALL_TIMEOUT:.0f} s"
            ) from None
        message: dict[str, Any] = json.loads(raw)
        return message

    def emulate(self, *, width: int, height: int, mobile: bool) -> None:
        """The viewport of a device; ``mobile`` also honours ``<meta name="viewport">``."""
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=mobile,
        )

    def navigate(self, url: str) -> None:
        """Load ``url`` and wait for its load event."""
        self._events.clear()
        answer = self.call("Page.navigate", url=url)
        if answer.get("errorText"):
            raise HarnessError(f"Chromium could not load {url}: {answer['errorText']}")
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in answer:
            raise HarnessError(f"{expression!r} threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def screenshot(self, path: Path) -> None:
        """The whole page (not only the viewport) as a PNG."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        answer = self.call(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(answer["data"]))


class Browser:
    def __init__(self, port: int) -> None:
        self.port = port
        self._sockets = ExitStack()

    def open_page(self) -> Page:
        with http_client() as client:
            targets = client.get(f"http://{LOOPBACK}:{self.port}/json/list").json()
        pages = [target for target in targets if target.get("type") == "page"]
        if not pages:
            raise HarnessError(f"Chromium has no page to drive: {targets}")
        socket: ClientConnection = self._sockets.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=None, proxy=None)
        )
        page = Page(socket)
        page.call("Page.enable")
        return page

    def close(self) -> None:
        self._sockets.close()


@contextmanager
def headless_chromium(workdir: Path) -> Iterator[Browser]:
    """Chromium with a DevTools port on loopback; it trusts any certificate (the tests'
    proxies are self-signed). Stopped on exit."""
    chromium = find_chromium()

    def make(port: int) -> ManagedProcess:
        return ManagedProcess(
            "chromium",
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={workdir / 'profile'}",
                "--ignore-certificate-errors",
                f"--remote-debugging-address={LOOPBACK}",
                f"--remote-debugging-port={port}",
                "about:blank",
            ],
            log_path=workdir / "chromium.log",
            cwd=workdir,
        )

    def probe(port: int) -> bool:
        with http_client() as client:
            return client.get(f"http://{LOOPBACK}:{port}/json/version").status_code == 200

    process, port = start_on_free_port(make, probe, timeout=CALL_TIMEOUT)
    browser = Browser(port)
    try:
        yield browser
    finally:
        browser.close()
        process.stop()
