"""The ``stacklab`` command line: one subcommand per job, each a thin layer over the toolkit.

Every subcommand lives in the module that does its work, as two functions:
``add_arguments(parser)`` and ``run(args) -> int``. This file only lists them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

# name -> (module that implements it, one-line help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "process-frame": (
        "stacklab.toolkit.process_frame",
        "single-frame processing: calexp, source catalog and PSF model of one image",
    ),
    "demo": (
        "stacklab.toolkit.demo",
        "simulate the demo dataset and run the main job on it",
    ),
    "coadd": (
        "stacklab.toolkit.coadd_cli",
        "coadd the exposures of a dataset or FITS files, one coadd per band",
    ),
    "simulate": (
        "stacklab.toolkit.simulate.cli",
        "simulate a multi-band, multi-epoch dataset with truth",
    ),
    "run": (
        "stacklab.toolkit.batch.cli_run",
        "run a pipeline of notebooks over parameter grids (resumes into the same folder)",
    ),
    "status": (
        "stacklab.toolkit.batch.cli_status",
        "show the tasks of a run folder and their states",
    ),
    "report": (
        "stacklab.toolkit.batch.report",
        "write the HTML report of a run folder",
    ),
}


def _parser(command_name: str | None = None) -> argparse.ArgumentParser:
    """Build the command-line parser, importing only ``command_name``'s module (if any).

    Importing every command's module would cost two seconds (scipy, astropy, nbformat)
    before ``stacklab status`` or ``stacklab --help`` could print anything.
    """
    parser = argparse.ArgumentParser(
        prog="stacklab",
        description="Astronomical image analysis in notebooks and batch runs.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in _COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == command_name:
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stacklab`` command line; return the process exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    # The command is the first word that is not an option (``-v`` takes no value).
    command_name = next((a for a in arguments if not a.startswith("-")), None)
    args = _parser(command_name).parse_args(arguments)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.verbose < 2:
        # distributed sets its loggers to INFO when it is imported (from dask's config; no
        # command module imports it at parse time); its scheduler chatter and nbconvert's
        # alt-text notes would bury the progress bar.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        logging.getLogger("traitlets").setLevel(logging.ERROR)
    try:
        return int(args._run(args))
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"stacklab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
