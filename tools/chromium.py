#!/usr/bin/env python3
"""Open a local HTML page in headless Chromium (Debian's `chromium`, tools/install_test_deps.sh) and report what a
reader would see: every image decoded or not, console errors, network requests, and a full-page screenshot.

Used by tests/test_compare.py on `mdship compare`'s report.html and, from the command line, to make the README's
screenshot:

    python tools/chromium.py artifacts/shapes/compare/report.html --screenshot docs/compare-report.png

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages separated by NUL
bytes on file descriptors 3 and 4), which needs only the standard library: playwright and selenium would each add a
package and a driver (and playwright a browser download) to do the same few calls. The browser starts with no
network features (no background networking, component updates, sync or QUIC) and a throwaway profile; any request
the page makes to the network is reported, so a test can require a self-contained page.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio"]

#: what the page reports about its images once loaded
IMAGES_JS = ("Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
             "naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}))")


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise BrowserError("chromium not found; run tools/install_test_deps.sh (Debian's chromium package)")


def _above_9(fd: int) -> int:
    """The same pipe end on a descriptor number above 9 (the original is closed)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class Chromium:
    """One headless browser with one page, spoken to over the DevTools pipe."""

    def __init__(self, binary: str | None = None, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="mdship-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        to_browser_r, from_browser_w = _above_9(to_browser_r), _above_9(from_browser_w)
        args = FLAGS + [f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"]
        # The browser reads commands on fd 3 and writes replies on fd 4: bash moves the pipe ends there (from
        # descriptors above 9, so the moves cannot overwrite each other; dash, Debian's sh, cannot name those).
        move = f"3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-"
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" {move}', binary or find_chromium(), *args],
            pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(Path(self.profile) / "stderr.log", "wb"))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    # ------------------------------------------------------------------ protocol
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise BrowserError("chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"chromium closed the DevTools pipe (did it start?): {self._stderr_tail()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _stderr_tail(self) -> str:
        try:
            lines = (Path(self.profile) / "stderr.log").read_text(errors="replace").splitlines()
        except OSError:
            return "no stderr"
        return " | ".join(line for line in lines if "dbus" not in line)[-500:] or "no stderr"

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        """One command; its result (events that arrive meanwhile are kept in `events`)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        seen = len(self.events)
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method:
                    return event
            seen = len(self.events)
            self.events.append(self._read_message(deadline))

    # ------------------------------------------------------------------ page
    def open(self, url: str, width: int = 1400, height: int = 900) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                         "deviceScaleFactor": 1, "mobile": False})
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:60]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (a failed load, a blocked resource)."""
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                out.append(params.get("exceptionDetails", {}).get("text", "exception"))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append(params["entry"].get("text", ""))
        return out

    def network_requests(self) -> list[str]:
        """URLs the page asked for that are neither the page itself (file:) nor inline (data:)."""
        urls = [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]
        return [u for u in urls if not u.startswith(("file:", "data:", "about:"))]

    def screenshot(self, path: Path, width: int, height: int | None = None) -> Path:
        """The whole page (or its top `height` CSS pixels), not only the viewport, as PNG."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        height = int(min(height or size["height"], size["height"]))
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                         "deviceScaleFactor": 1, "mobile": False})
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
            "x": 0, "y": 0, "width": width, "height": height, "scale": 1}})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def inspect_page(page: str | Path, screenshot: str | Path | None = None, width: int = 1400,
                 height: int | None = None) -> dict:
    """Open a local page; {"images": [...], "console_errors": [...], "network": [...], "screenshot": path}."""
    url = Path(page).resolve().as_uri()
    with Chromium() as browser:
        browser.open(url, width)
        result = {"images": browser.evaluate(IMAGES_JS), "title": browser.evaluate("document.title"),
                  "console_errors": browser.console_errors(), "network": browser.network_requests()}
        if screenshot:
            result["screenshot"] = str(browser.screenshot(Path(screenshot), width, height))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", help="a local HTML file")
    ap.add_argument("--screenshot", help="write a full-page PNG here")
    ap.add_argument("--width", type=int, default=1400, help="viewport width in CSS pixels (default 1400)")
    ap.add_argument("--height", type=int, default=None, help="capture only the top HEIGHT CSS pixels")
    ap.add_argument("--colors", type=int, default=None,
                    help="reduce the screenshot to a palette of this many colours (a smaller PNG, e.g. for docs)")
    args = ap.parse_args(argv)
    result = inspect_page(args.page, args.screenshot, args.width, args.height)
    if args.screenshot and args.colors:
        from PIL import Image

        Image.open(args.screenshot).convert("RGB").quantize(args.colors).save(args.screenshot, optimize=True)
    broken = [i for i in result["images"] if not i["naturalWidth"]]
    print(json.dumps({k: v for k, v in result.items() if k != "images"} | {
        "images": len(result["images"]), "broken_images": broken}, indent=2))
    return 1 if broken or result["console_errors"] or result["network"] else 0


if __name__ == "__main__":
    sys.exit(main())
