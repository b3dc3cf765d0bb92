"""A real headless browser (Chromium from the OS packages) driven over the DevTools protocol on a pipe: open an
HTML page lancy wrote, record every request the page makes, measure what each plot drew, take a screenshot.

    seen = render(page, tmp_path)      # seen.figures: [{"width", "height", "data", "drawn"}], seen.requests, seen.png

Requests are the page's own (Network.requestWillBeSent on its tab): the browser's background traffic (component
updates, sign-in) is not the page's and is not counted; a probe page that loads a remote image proves the
recording works (tests/integration/test_report.py).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Each <figure>'s size, how many `.plot-data` groups it has (lancy_trl/report/plots.py marks what a plot draws from
# the data) and how many of them have length or area on screen.
CHECK = """JSON.stringify([...document.querySelectorAll('figure')].map(f => {
  const svg = f.querySelector('svg'); const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  const data = [...f.querySelectorAll('.plot-data')].map(g => { const b = g.getBBox(); return b.width > 0 || b.height > 0; });
  return {width: box.width, height: box.height, data: data.length, drawn: data.filter(x => x).length};
}))"""
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
         "--hide-scrollbars", "--remote-debugging-pipe"]


@dataclass
class Seen:
    figures: list[dict]
    requests: list[str]
    png: Path


def chromium() -> str:
    # Debian's /usr/bin/chromium wrapper adds flags and API keys; the binary itself, bare
    found = next((p for p in ("/usr/lib/chromium/chromium",) if Path(p).is_file()), None) or shutil.which("chromium")
    if found:
        return found
    why = "no Chromium for the browser test: `apt-get install chromium` (an OS package; .ci/run installs it)"
    if os.environ.get("LANCY_REQUIRE_BROWSER") == "1":  # CI: a missing browser is a failure, never a skip
        raise AssertionError(why)
    import pytest

    pytest.skip(why)


def _on_3_and_4(read: int, write: int) -> None:
    """In the child: the pipe ends as fds 3 and 4, inheritable (copied first: either may already be 3 or 4)."""
    read, write = os.dup(read), os.dup(write)
    os.dup2(read, 3)
    os.dup2(write, 4)


class Browser:
    """Chromium with the DevTools protocol on fds 3 (commands in) and 4 (replies and events out), NUL-separated."""

    def __init__(self, profile: Path) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        self.proc = subprocess.Popen(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, close_fds=False, preexec_fn=lambda: _on_3_and_4(to_browser, from_browser))
        os.close(to_browser)
        os.close(from_browser)
        self._ids, self._buffer, self.events = 0, b"", []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._ids += 1
        message = {"id": self._ids, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._next()
            if reply.get("id") == self._ids:
                assert "error" not in reply, reply
                return reply["result"]
            self.events.append(reply)
        raise TimeoutError(method)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method} within {timeout} s"
            self.events.append(self._next())

    def _next(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._read, 1 << 20)
            assert chunk, "Chromium closed the DevTools pipe"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._write)
        os.close(self._read)


def render(page: Path, folder: Path, width: int = 1200, height: int = 2400) -> Seen:
    """Open `page` in headless Chromium: what its figures drew, the requests it made, and a screenshot."""
    folder.mkdir(parents=True, exist_ok=True)
    browser = Browser(folder / "profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Network.enable", "Page.enable"):
            browser.send(domain, session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                            "deviceScaleFactor": 1, "mobile": False}, session)
        browser.events.clear()
        browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session)
        browser.wait_for("Page.loadEventFired")
        time.sleep(0.5)  # late requests (a script's, a lazy image's) still count
        browser.send("Runtime.evaluate", {"expression": "1"}, session)  # drains the events that came meanwhile
        figures = json.loads(browser.send("Runtime.evaluate", {"expression": CHECK, "returnByValue": True},
                                          session)["result"]["value"])
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
    finally:
        browser.close()
    png = folder / f"{page.stem}.png"
    png.write_bytes(base64.b64decode(shot))
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"
                and e.get("sessionId") == session]
    return Seen(figures, requests, png)


if __name__ == "__main__":  # python -m tests.browser PAGE.html OUT.png [HEIGHT]: the README's screenshot
    import sys

    out = Path(sys.argv[2])
    seen = render(Path(sys.argv[1]), out.parent / ".browser", height=int(sys.argv[3]) if len(sys.argv) > 3 else 2400)
    shutil.move(seen.png, out)
    shutil.rmtree(out.parent / ".browser")
    print(f"{out}: {len(seen.figures)} figures, {sum(f['drawn'] for f in seen.figures)} drawn, "
          f"requests other than the page: {len(seen.requests) - 1}")
