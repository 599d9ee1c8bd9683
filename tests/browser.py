"""Open local HTML files in headless Chromium and see what a reader would: the DOM after load, the console.

Python's standard library only. Chromium is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: commands go in on the child's file descriptor 3, replies and events come out on
its descriptor 4, each message JSON ended by a NUL byte), so no port, no websocket and no extra package. One
browser serves several pages::

    with Browser() as browser:
        page = browser.open("report.html", evaluate={"images": "document.images.length"})
        page.dom, page.console, page.values["images"]

``page.console`` holds console API calls (``console.error`` ...), uncaught exceptions (level "error") and
the browser's own log entries (failed loads, blocked content), so "no console error" can fail.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import select
import shutil
import subprocess
import tempfile
import time
from typing import Any, Mapping, NamedTuple, Optional

INSTALL_HINT = ("chromium is missing: install Debian's chromium package (scripts/setup.sh installs it: "
                "apt-get install chromium); the report tests open the HTML report in it")


class ConsoleMessage(NamedTuple):
    level: str    # "error", "warning", "info", "log", "debug", ...
    text: str
    source: str   # "console" (console API), "exception" (uncaught), "log" (the browser's own log)


class Page(NamedTuple):
    dom: str                    # document.documentElement.outerHTML after the load event
    console: list[ConsoleMessage]
    values: dict[str, Any]      # the results of the expressions asked for, by name

    @property
    def errors(self) -> list[ConsoleMessage]:
        return [message for message in self.console if message.level == "error"]


def chromium() -> str:
    """The chromium executable; fails with how to install it where there is none."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise FileNotFoundError(INSTALL_HINT)
    return path


class Browser:
    """A headless Chromium on a DevTools pipe; a context manager. ``timeout``: seconds for any one step."""

    def __init__(self, timeout: float = 30.0):
        self.timeout = timeout
        executable = chromium()
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        self._log = tempfile.TemporaryFile()
        to_child, self._send = os.pipe()
        self._receive, from_child = os.pipe()
        # The child's ends moved above 4 first, so that putting them on 3 and 4 cannot overwrite either.
        to_child, from_child = (_above_4(fd) for fd in (to_child, from_child))

        def descriptors():  # in the child, before exec: the pipe ends onto 3 and 4, where chromium looks
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self._process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={self._profile.name}", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, preexec_fn=descriptors,
            pass_fds=(3, 4))
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._call("Browser.close", timeout=5)
            except (RuntimeError, OSError):
                pass
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for fd in (self._send, self._receive):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        self._profile.cleanup()

    def open(self, path, evaluate: Optional[Mapping[str, str]] = None) -> Page:
        """Load the local file ``path`` in a new tab, wait for its load event, and return its DOM, the
        console messages up to then, and ``evaluate``'s expressions (name -> JavaScript, evaluated in the
        page after load, by value; a promise is awaited)."""
        url = pathlib.Path(path).resolve().as_uri()
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Log"):
                self._call(f"{domain}.enable", session=session)
            self._events = [event for event in self._events if event.get("sessionId") != session]
            navigation = self._call("Page.navigate", {"url": url}, session=session)
            if navigation.get("errorText"):
                raise RuntimeError(f"chromium could not open {url}: {navigation['errorText']}")
            loaded = len(self._events)
            while True:  # a late load event of the blank tab may come first: wait for this page's own
                loaded = self._wait_for("Page.loadEventFired", session, loaded)
                state = self._evaluate("[location.href, document.readyState]", session)
                if state == [url, "complete"]:
                    break
            values = {name: self._evaluate(expression, session) for name, expression in (evaluate or {}).items()}
            dom = self._evaluate("document.documentElement.outerHTML", session)
            # Replies come after the events sent before them, so every message logged up to here is in.
            console = [message for event in self._events if event.get("sessionId") == session
                       for message in _console_message(event)]
            return Page(dom, console, values)
        finally:
            self._events = [event for event in self._events if event.get("sessionId") != session]
            self._call("Target.closeTarget", {"targetId": target})

    def _evaluate(self, expression: str, session: str) -> Any:
        reply = self._call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=session)
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise RuntimeError(f"evaluating {expression!r} in the page threw: {text}")
        return reply["result"].get("value")

    def _call(self, method: str, params: Optional[dict] = None, session: Optional[str] = None,
              timeout: Optional[float] = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._send, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"chromium refused {method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def _wait_for(self, method: str, session: str, start: int) -> int:
        """Wait for the event ``method`` of ``session`` at or after ``self._events[start]``; returns the
        index after it."""
        deadline = time.monotonic() + self.timeout
        seen = start
        while True:
            for index in range(seen, len(self._events)):
                event = self._events[index]
                if event.get("method") == method and event.get("sessionId") == session:
                    return index + 1
            seen = len(self._events)
            message = self._read(deadline, method)
            if "method" in message:
                self._events.append(message)

    def _read(self, deadline: float, waiting_for: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready = select.select([self._receive], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                raise RuntimeError(f"chromium gave no answer to {waiting_for} in time{self._stderr_tail()}")
            chunk = os.read(self._receive, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed its DevTools pipe (exit {self._process.poll()})"
                                   f"{self._stderr_tail()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _stderr_tail(self) -> str:
        self._log.seek(0)
        tail = self._log.read()[-2000:].decode(errors="replace").strip()
        return f"; its output ends:\n{tail}" if tail else ""


def _above_4(fd: int) -> int:
    """A copy of ``fd`` numbered 5 or more (not inherited), the original closed."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return copy


def _console_message(event: dict) -> list[ConsoleMessage]:
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.consoleAPICalled":
        text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
        level = {"warning": "warning", "assert": "error"}.get(params.get("type"), params.get("type", "log"))
        return [ConsoleMessage(level, text, "console")]
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        text = details.get("exception", {}).get("description") or details.get("text", "")
        return [ConsoleMessage("error", text, "exception")]
    if method == "Log.entryAdded":
        entry = params.get("entry", {})
        return [ConsoleMessage(entry.get("level", "info"), entry.get("text", ""), "log")]
    return []


def open_page(path, evaluate: Optional[Mapping[str, str]] = None, timeout: float = 30.0) -> Page:
    """Start chromium, open one page (see :meth:`Browser.open`), and stop it."""
    with Browser(timeout) as browser:
        return browser.open(path, evaluate)
