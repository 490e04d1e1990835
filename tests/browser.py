"""Headless Chromium driven over the DevTools protocol on a pipe (tests only, stdlib only).

``open_page(path)`` starts Debian's ``chromium`` with ``--remote-debugging-pipe``
(JSON messages, NUL-terminated, on fds 3 and 4), loads a local file, waits
for the load event and for every <video> to have data, collects console
errors, uncaught exceptions and failed loads, and can take a full-page
screenshot. No network, no extra package.
"""
from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio", "--remote-debugging-pipe"]


def find_browser() -> str | None:
  """Path of a Chromium binary, or None."""
  for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
    p = shutil.which(name)
    if p:
      return p
  return None


class Page:
  """One tab of a headless Chromium; use as a context manager."""

  def __init__(self, binary: str, width: int = 1280, height: int = 900):
    self._tmp = tempfile.mkdtemp(prefix="chromium-profile-")
    to_child_r, self._to_child_w = os.pipe()
    self._from_child_r, from_child_w = os.pipe()

    def fds():
      os.dup2(to_child_r, 3)
      os.dup2(from_child_w, 4)
    self._proc = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={self._tmp}", f"--window-size={width},{height}",
         "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=fds, pass_fds=(3, 4, to_child_r, from_child_w))
    os.close(to_child_r)
    os.close(from_child_w)
    self._buf = b""
    self._id = 0
    self.events: list[dict] = []
    target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    self._session = self.call("Target.attachToTarget",
                              {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
      self.call(f"{domain}.enable", session=True)
    self.call("Emulation.setDeviceMetricsOverride",
              {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
              session=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    try:
      self.call("Browser.close", timeout=5)
    except Exception:  # pylint: disable=broad-except
      pass
    try:
      self._proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self._proc.kill()
      self._proc.wait()
    os.close(self._to_child_w)
    os.close(self._from_child_r)
    shutil.rmtree(self._tmp, ignore_errors=True)

  def _read_message(self, deadline: float) -> dict:
    while b"\0" not in self._buf:
      if time.monotonic() > deadline:
        raise TimeoutError("no reply from Chromium")
      chunk = os.read(self._from_child_r, 1 << 16)
      if not chunk:
        raise RuntimeError("Chromium closed the DevTools pipe")
      self._buf += chunk
    msg, self._buf = self._buf.split(b"\0", 1)
    return json.loads(msg)

  def call(self, method: str, params: dict | None = None, session: bool = False,
           timeout: float = 60.0) -> dict:
    """Sends one command and returns its result (events received meanwhile are kept)."""
    self._id += 1
    msg = {"id": self._id, "method": method, "params": params or {}}
    if session:
      msg["sessionId"] = self._session
    os.write(self._to_child_w, json.dumps(msg).encode() + b"\0")
    deadline = time.monotonic() + timeout
    while True:
      m = self._read_message(deadline)
      if m.get("id") == self._id:
        if "error" in m:
          raise RuntimeError(f"{method}: {m['error']}")
        return m.get("result", {})
      self.events.append(m)

  def wait_event(self, method: str, timeout: float = 60.0, since: int = 0) -> dict:
    """The first event ``method`` at or after position ``since`` of ``events`` (waits)."""
    deadline = time.monotonic() + timeout
    for e in self.events[since:]:
      if e.get("method") == method:
        return e
    while True:
      m = self._read_message(deadline)
      self.events.append(m)
      if m.get("method") == method:
        return m

  def evaluate(self, expression: str):
    """Value of a JS expression (promises awaited), JSON-serialisable."""
    r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                       "awaitPromise": True}, session=True)
    if "exceptionDetails" in r:
      raise RuntimeError(f"JS error: {r['exceptionDetails']}")
    return r["result"].get("value")

  def goto(self, path: str | os.PathLike, timeout: float = 60.0) -> None:
    """Loads a local file and waits for its load event."""
    url = pathlib.Path(path).absolute().as_uri()
    since = len(self.events)
    self.call("Page.navigate", {"url": url}, session=True)
    self.wait_event("Page.loadEventFired", timeout, since)

  def errors(self) -> list[str]:
    """Console errors, uncaught exceptions and failed loads seen so far."""
    out = []
    for e in self.events:
      m, p = e.get("method"), e.get("params", {})
      if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
        out.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                          for a in p.get("args", [])))
      elif m == "Runtime.exceptionThrown":
        out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
      elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
        out.append("log: " + p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
      elif m == "Network.loadingFailed":
        out.append("load failed: " + p.get("errorText", ""))
    return out

  def screenshot(self, path: str | os.PathLike) -> pathlib.Path:
    """Full-page PNG screenshot."""
    r = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                  session=True)
    path = pathlib.Path(path)
    path.write_bytes(base64.b64decode(r["data"]))
    return path


PAGE_STATE_JS = r"""
(async () => {
  const until = Date.now() + 20000;
  const ready = () => [...document.images].every(i => i.complete) &&
      [...document.querySelectorAll('video')].every(v => v.readyState >= 2 || v.error);
  while (!ready() && Date.now() < until) await new Promise(r => setTimeout(r, 100));
  return {
    images: [...document.images].map(i => ({src: i.getAttribute('src').slice(0, 60),
        alt: i.alt, w: i.naturalWidth, h: i.naturalHeight, gif: i.src.startsWith('data:image/gif')
        || i.src.endsWith('.gif')})),
    videos: [...document.querySelectorAll('video')].map(v => ({ready: v.readyState,
        error: v.error ? v.error.code : null, w: v.videoWidth, h: v.videoHeight,
        duration: v.duration})),
    curves: [...document.querySelectorAll('svg.curve polyline')].map(p => ({
        points: p.points.length, length: p.getTotalLength(),
        box: p.getBBox().width * p.getBBox().height + p.getBBox().width})),
    canvases: [...document.querySelectorAll('canvas')].map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let ink = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) ink++;
        return {w: c.width, h: c.height, ink: ink, faces: c.getAttribute('data-drawn')}; }),
    tables: [...document.querySelectorAll('table')].length,
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
    title: document.title,
    text: document.body.innerText,
  };
})()
"""


def page_state(page: Page) -> dict:
  """Images, videos, curves, tables, links and text of the loaded page (see PAGE_STATE_JS)."""
  return page.evaluate(PAGE_STATE_JS)
