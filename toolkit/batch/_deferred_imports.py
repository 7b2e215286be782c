"""Defer the import of ``rfc3987_syntax``, which costs a second at every start.

nbformat imports jsonschema, and jsonschema's format checkers import ``rfc3987_syntax``
when it is installed (jupyter_events, and so JupyterLab, installs it). That package
builds its Lark parsers when it is imported: about 1.0 s of CPU, paid by the runner,
by every task host on every worker, and by every ``stacklab`` command, while nbformat's
schemas never use the ``iri`` formats it checks (upstream: jsonschema issue 1428).

`defer_rfc3987_syntax` puts a stand-in module in ``sys.modules`` while jsonschema is
imported. jsonschema takes ``is_valid_syntax`` from it, which imports the real package
on its first call, so ``iri`` and ``iri-reference`` are checked exactly as before, just
not paid for until one is. The stand-in is removed again at once: a later
``import rfc3987_syntax`` gets the real package.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

__all__ = ["defer_rfc3987_syntax"]

_NAME = "rfc3987_syntax"


def _real_is_valid_syntax(*args: Any, **kwargs: Any) -> Any:
    module = importlib.import_module(_NAME)
    return module.is_valid_syntax(*args, **kwargs)


def defer_rfc3987_syntax() -> None:
    """Import jsonschema with ``rfc3987_syntax`` loaded only when first used.

    Does nothing when jsonschema is already imported or ``rfc3987_syntax`` is not
    installed.
    """
    if "jsonschema" in sys.modules or _NAME in sys.modules:
        return
    if importlib.util.find_spec(_NAME) is None or importlib.util.find_spec("jsonschema") is None:
        return
    stand_in = types.ModuleType(_NAME, "stand-in: imports rfc3987_syntax when first called")
    stand_in.is_valid_syntax = _real_is_valid_syntax  # type: ignore[attr-defined]
    sys.modules[_NAME] = stand_in
    try:
        importlib.import_module("jsonschema")
    finally:
        if sys.modules.get(_NAME) is stand_in:
            del sys.modules[_NAME]
