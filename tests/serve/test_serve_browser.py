"""The upload page driven in real headless Chromium, over the DevTools protocol on a pipe.

No browser driver package is needed: Chromium started with ``--remote-debugging-pipe`` reads
DevTools commands (JSON, NUL-terminated) on fd 3 and answers on fd 4. Skipped where no Chromium
is installed (Debian/Ubuntu: ``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the API needs the serve extra: pip install 'ctcovid[serve]'")

from ctcovid.serve import ServeSettings, create_app

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="Chromium is not installed (apt-get install chromium)"
)


class Chromium:
    """A headless Chromium controlled through --remote-debugging-pipe."""

    def __init__(self, binary: str) -> None:
        cmd_r, cmd_w = os.pipe()  # we write commands, Chromium reads fd 3
        ev_r, ev_w = os.pipe()  # Chromium writes fd 4, we read
        # Move Chromium's ends above 10 so the shell's "3<&N 4>&M" cannot clobber one with the other.
        hi_r, hi_w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(ev_w, fcntl.F_DUPFD, 10)
        os.close(cmd_r)
        os.close(ev_w)
        self.profile = tempfile.mkdtemp(prefix="ctcovid-chromium-")
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--no-default-browser-check", "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}", "--window-size=1100,1400", "about:blank",
        ]  # fmt: skip
        script = f'exec "$0" "$@" 3<&{hi_r} 4>&{hi_w} {hi_r}<&- {hi_w}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, binary, *flags],
            pass_fds=(hi_r, hi_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(hi_r)
        os.close(hi_w)
        self.out = os.fdopen(cmd_w, "wb", buffering=0)
        self.inp = os.fdopen(ev_r, "rb", buffering=0)
        self.buf = b""
        self.next_id = 0
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.inp], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.inp.fileno(), 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        self.out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable")
        self.send("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete' && !!document.getElementById('file')")

    def js(self, expression: str) -> Any:
        res = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied: {expression}")
            time.sleep(0.1)

    def close(self) -> None:
        try:
            self.out.close()
            self.proc.terminate()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.inp.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def _choose_file(browser: Chromium, url: str, scan: Path) -> None:
    """Open the page, wait for the model line, and put ``scan`` into the file input."""
    browser.open(url + "/")
    browser.wait_for("document.getElementById('model').textContent.includes('r3d_10')")
    root = browser.send("DOM.getDocument")["root"]["nodeId"]
    node = browser.send("DOM.querySelector", {"nodeId": root, "selector": "#file"})["nodeId"]
    browser.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(scan)]})


def test_upload_page_shows_probabilities_and_the_montage(
    ckpt: Path, uploads, live_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CTCOVID_API_TOKEN", raising=False)
    server = live_server(create_app(ckpt, ServeSettings(tmp_dir=str(tmp_path / "srv"))))
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(uploads["nifti"])
    assert BROWSER is not None
    browser = Chromium(BROWSER)
    try:
        _choose_file(browser, server.url, scan)
        assert browser.js("document.getElementById('method').value") == "ig"  # the API's default
        # Grad-CAM's blobs cover the lungs even for this untrained model: a colourful screenshot.
        browser.js("document.getElementById('method').value = 'gradcam'")
        browser.js("document.getElementById('go').click()")
        browser.wait_for("['done', 'error'].includes(document.getElementById('status').dataset.state)")
        status = browser.js("document.getElementById('status').textContent")
        assert browser.js("document.getElementById('status').dataset.state") == "done", status
        label = browser.js("document.getElementById('label').textContent")
        task = browser.js("document.getElementById('task').textContent")
        rows = browser.js("[...document.querySelectorAll('#probs tr')].map(r => r.textContent)")
        natural = browser.js("document.getElementById('montage').naturalWidth")
        trust = browser.js("document.getElementById('trust').textContent")
        shot = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"})["data"])
    finally:
        browser.close()
    assert label in ("NCP", "CP", "Normal")
    assert "gradcam on layer" in task, task  # the choice reached the API
    assert len(rows) == 3 and all("%" in r for r in rows)
    assert natural > 300  # the montage image decoded
    assert "uncertainty" in trust and "out-of-distribution score" in trust, trust
    out = Path(os.environ.get("CTCOVID_SCREENSHOT_DIR", tmp_path)) / "serve_page.png"
    out.write_bytes(shot)
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)
    assert img.shape[0] >= 600 and img.shape[1] >= 800
    # The heatmap overlay is colourful (jet over gray CT); a page without the montage is not (its
    # blue bars and button make ~0.4 % of the pixels; the lung-field overlay ~6 %).
    saturation = img.max(axis=2) - img.min(axis=2)
    assert (saturation > 40).mean() > 0.03


SHARED_ABDOMEN = Path(__file__).resolve().parents[3] / "shared" / "data" / "abdomen-ct.nii.gz"


@pytest.mark.skipif(not SHARED_ABDOMEN.is_file(), reason="needs ../shared/data")
def test_upload_page_says_a_scan_without_a_chest_is_not_assessable(
    ckpt: Path, live_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CTCOVID_API_TOKEN", raising=False)
    server = live_server(create_app(ckpt, ServeSettings(tmp_dir=str(tmp_path / "srv"))))
    assert BROWSER is not None
    browser = Chromium(BROWSER)
    try:
        _choose_file(browser, server.url, SHARED_ABDOMEN)
        browser.js("document.getElementById('go').click()")
        browser.wait_for("['done', 'error'].includes(document.getElementById('status').dataset.state)")
        state = browser.js("document.getElementById('status').dataset.state")
        label = browser.js("document.getElementById('label').textContent")
        refer = browser.js("document.getElementById('refer').textContent")
        notes = browser.js("document.getElementById('warnings').textContent")
        montage_hidden = browser.js("document.getElementById('montage').hidden")
    finally:
        browser.close()
    assert state == "done" and label == "not assessable"
    assert refer.startswith("Refer to a radiologist") and "lung field" in refer
    assert "quality: no lung field found" in notes and montage_hidden
