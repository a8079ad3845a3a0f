"""What the browser tests (and bench/ui.py) share: Debian's Chromium (never Playwright's own
download), a dashboard server on a free loopback port, where screenshots go, and the
dashboard process's resident memory."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def ensure_chromium() -> str:
    """Debian's Chromium, installed with apt when missing (never Playwright's own download)."""
    if not Path(CHROMIUM).exists() and shutil.which("apt-get"):
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(
                cmd,
                check=False,
                capture_output=True,
                timeout=900,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing and `apt-get install -y chromium` did not provide it")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory from /proc (Linux): now (VmRSS), or its peak (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def start_dashboard(runs: Path) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` on a free loopback port with ``runs`` as its runs dir, once it
    answers its health check; (the process, its URL). Raises RuntimeError after 60 s."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
    ]
    env = {**os.environ, "STAGECRAFT_RUNS_DIR": str(runs), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise RuntimeError("streamlit did not answer on /_stcore/health within 60 s")


def shoot(page, name: str) -> None:
    """A screenshot of the whole page into SHOTS: Streamlit scrolls inside its main section,
    so the window is made as tall as that section's content for the shot."""
    height = page.evaluate(
        "() => { const main = document.querySelector('[data-testid=stMain]');"
        " return main ? main.scrollHeight : 1000; }"
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": min(max(height, 1000), 8000)})
    page.wait_for_timeout(1500)  # charts redraw at the new size
    page.screenshot(path=str(SHOTS / name), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})
