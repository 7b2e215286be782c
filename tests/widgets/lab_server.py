"""Start and stop a private JupyterLab server on loopback (used by browser tests and benchmarks)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "stacklab-test-token"
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Lab:
    """A running JupyterLab server on 127.0.0.1 (root dir, port, token); stop() ends it."""

    def __init__(self, scratch: Path) -> None:
        self.root = scratch / "notebooks"
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = TOKEN
        env = dict(os.environ)
        env["JUPYTER_CONFIG_DIR"] = str(scratch / "config")
        env["JUPYTER_RUNTIME_DIR"] = str(scratch / "runtime")
        env["JUPYTERLAB_SETTINGS_DIR"] = str(scratch / "settings")
        env["JUPYTERLAB_WORKSPACES_DIR"] = str(scratch / "workspaces")
        settings = scratch / "settings" / "@jupyterlab"
        for plugin, values in (
            ("apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False}),
            ("docmanager-extension/plugin", {"autosave": False}),
        ):
            path = settings / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        jupyter = shutil.which("jupyter", path=str(Path(sys.executable).parent)) or "jupyter"
        self.log_path = scratch / "lab.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                jupyter,
                "lab",
                "--no-browser",
                f"--port={self.port}",
                "--ip=127.0.0.1",
                "--allow-root",
                f"--ServerApp.token={TOKEN}",
                f"--ServerApp.root_dir={self.root}",
                "--LabApp.expose_app_in_browser=True",
            ],
            cwd=self.root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.api("/api/status")
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    msg = f"jupyter lab did not start; see {self.log_path}"
                    raise RuntimeError(msg) from None
                time.sleep(0.25)

    def api(self, path: str, method: str = "GET") -> Any:
        """Call the server's REST API with the token; return the decoded JSON."""
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def delete_sessions(self) -> None:
        """Shut down every kernel session (kernels otherwise outlive the page)."""
        for session in self.api("/api/sessions"):
            self.api(f"/api/sessions/{session['id']}", method="DELETE")

    def stop(self) -> None:
        """Stop the server by its process id."""
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def open_notebook(browser: Any, lab: Lab, name: str, cells: list[str]) -> Any:
    """Write a notebook of code cells, open it in a new page and wait for an idle kernel."""
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(notebook, lab.root / name)
    lab.delete_sessions()
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}&reset")
    page.wait_for_function(
        "window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel?.status"
        " === 'idle'",
        timeout=90_000,
    )
    return page


def run_cell(page: Any, index: int) -> None:
    """Run one cell of the notebook shown in ``page`` (does not wait for it)."""
    page.evaluate(
        f"""() => {{ const nb = window.jupyterapp.shell.currentWidget;
        nb.content.activeCellIndex = {index};
        return window.jupyterapp.commands.execute('notebook:run-cell'); }}"""
    )
