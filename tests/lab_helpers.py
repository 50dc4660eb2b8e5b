"""Starting and stopping a Jupyter server for the lab and browser tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent  # the environment running the tests (.venv or a conda env)


def make_lab(port: int, token: str, extra: str = "") -> list[str]:
    """The `make lab` command line with the real Makefile and this environment, serving the
    ``notebooks/`` folder of the directory it runs in (``-o``: the install stamp counts as done, so
    nothing is installed)."""
    lab_args = f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token={token} {extra}".strip()
    return [
        "make",
        "--no-print-directory",
        "-f",
        str(ROOT / "Makefile"),
        "-o",
        f"{VENV}/.cmp-installed",
        "lab",
        f"VENV={VENV}",
        f"LAB_ARGS={lab_args}",
    ]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_status(url: str, token: str | None = None) -> int:
    """The HTTP status of a GET of ``url`` (redirects not followed), with ``token`` if given."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def start_server(
    command: list[str],
    port: int,
    token: str,
    log_path: Path,
    cwd: Path,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start ``command`` (a Jupyter server on ``port``) in its own process group; wait until
    ``/api/status`` answers 200 with ``token``. The log goes to ``log_path``."""
    log = open(log_path, "w")
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "JUPYTER_PLATFORM_DIRS": "1", **(env or {})},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Jupyter server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if http_status(f"http://127.0.0.1:{port}/api/status", token) == 200:
                return process
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.5)
    stop_server(process)
    raise TimeoutError(f"the Jupyter server did not answer within {timeout:.0f} s: {log_path.read_text()[-2000:]}")


def stop_server(process: subprocess.Popen) -> None:
    """Stop the server's process group (make, jupyter and its kernels), politely first."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 5), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
            if sig == signal.SIGINT:  # jupyter asks for a confirmation: a second SIGINT shuts down at once
                time.sleep(0.2)
                os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
