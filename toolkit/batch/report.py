"""``stacklab report RUNDIR``: an HTML page of a run with links to every executed notebook.

The page lists each task's state, duration, attempts, parameters and error, links to its
executed notebook rendered to HTML (rendered once, and again only when the notebook
changed), shows the figures it declared as outputs and links its other outputs
(catalogs, JSON summaries).
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import time
from pathlib import Path

from .registry import Registry, TaskRecord

__all__ = ["add_arguments", "run", "write_report"]

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".svg", ".gif"}
_STATE_COLOURS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "skipped": "#ef6c00",
    "cancelled": "#6a1b9a",
    "interrupted": "#6a1b9a",
    "running": "#1565c0",
    "pending": "#616161",
}
_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em}"
    "table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid #ddd;"
    "vertical-align:top;text-align:left}code{font-size:90%}img{max-width:260px;margin:2px}"
    ".err{color:#c62828;white-space:pre-wrap;max-width:50em}"
)


def _render_notebook(source: Path, target: Path) -> bool:
    if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
        return True
    try:
        import nbformat
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter(template_name="lab").from_notebook_node(
            nbformat.read(source, as_version=4)
        )
    except Exception as err:  # a notebook that cannot be rendered must not stop the report
        log.warning("could not render %s to HTML: %s", source, err)
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(body)
    tmp.replace(target)
    return True


def _link(href: str, text: str) -> str:
    return f"<a href='{html.escape(href, quote=True)}'>{html.escape(text)}</a>"


def _task_row(record: TaskRecord, rundir: Path, out_dir: Path) -> str:
    colour = _STATE_COLOURS.get(record.state, "#000")
    cells = [
        f"<code>{html.escape(record.task_id)}</code>",
        f"<b style='color:{colour}'>{html.escape(record.state)}</b>",
        "" if record.duration_s is None else f"{record.duration_s:.2f}",
        str(record.attempts),
        "<code>" + html.escape(json.dumps(record.parameters)[:400]) + "</code>",
    ]
    links = []
    if record.executed_notebook:
        source = rundir / record.executed_notebook
        rendered = out_dir / "notebooks" / record.step / f"{record.label}.html"
        if source.is_file() and _render_notebook(source, rendered):
            links.append(_link(os.path.relpath(rendered, out_dir), "notebook"))
        elif source.is_file():
            links.append(_link(os.path.relpath(source, out_dir), "notebook (.ipynb)"))
    figures = []
    folder = rundir / "tasks" / record.step / record.label
    for name, entry in (record.outputs or {}).items():
        path = folder / entry["file"]
        href = os.path.relpath(path, out_dir)
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            quoted = html.escape(href, quote=True)
            figures.append(
                f"<a href='{quoted}'><img src='{quoted}' alt='{html.escape(name, quote=True)}'></a>"
            )
        else:
            links.append(_link(href, name))
    cells.append(" ".join(links))
    cells.append("".join(figures))
    error = ""
    if record.error_class:
        where = "" if record.cell_index is None else f" (cell {record.cell_index})"
        error = f"{record.error_class}{where}: {record.ename}: {record.evalue}"
    cells.append(f"<div class='err'>{html.escape(error[:1000])}</div>")
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def write_report(rundir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the HTML report of a run folder and return its path.

    Parameters
    ----------
    rundir : str or path-like
        A run folder written by `run_pipeline`.
    out : str or path-like, optional
        The HTML file to write (default ``RUNDIR/report/index.html``); rendered notebooks
        go to a ``notebooks`` folder next to it.

    Returns
    -------
    pathlib.Path
    """
    folder = Path(rundir).resolve()
    with Registry(folder, readonly=True) as registry:
        records = registry.tasks()
        runs = registry.runs()
    target = Path(out).resolve() if out is not None else folder / "report" / "index.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for record in records:
        counts[record.state] = counts.get(record.state, 0) + 1
    latest = runs[-1] if runs else {}
    packages = latest.get("provenance", {}).get("environment", {}).get("packages", {})
    git = latest.get("provenance", {}).get("git", {})
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no tasks"
    head = "".join(
        f"<th>{h}</th>"
        for h in ("task", "state", "seconds", "tries", "parameters", "links", "figures", "error")
    )
    rows = "".join(_task_row(record, folder, target.parent) for record in records)
    versions = ", ".join(f"{k} {v}" for k, v in packages.items() if v)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>stacklab run {html.escape(folder.name)}</title><style>{_STYLE}</style>"
        "</head><body>"
        f"<h1>stacklab run <code>{html.escape(str(folder))}</code></h1>"
        f"<p>{html.escape(summary)}. Latest run <code>{html.escape(str(latest.get('run_id')))}"
        f"</code> ({html.escape(str(latest.get('state')))}) of "
        f"<code>{html.escape(str(latest.get('pipeline')))}</code>.</p>"
        f"<p>Notebook commits: <code>{html.escape(json.dumps(git))}</code><br>"
        f"Versions: {html.escape(versions)}</p>"
        f"<table><tr>{head}</tr>{rows}</table>"
        f"<p><small>written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}</small></p>"
        "</body></html>"
    )
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(page)
    tmp.replace(target)
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``report`` options to ``parser``."""
    parser.add_argument("rundir", help="run folder written by 'stacklab run'")
    parser.add_argument("--out", default=None, help="HTML file (default RUNDIR/report/index.html)")


def run(args: argparse.Namespace) -> int:
    """Write the report and print where it is."""
    path = write_report(args.rundir, args.out)
    print(f"report: {path}")
    return 0
