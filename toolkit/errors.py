"""The one exception type for algorithm failures (bad input raises ValueError/TypeError)."""

from __future__ import annotations

from typing import Any

__all__ = ["ToolkitError"]


class ToolkitError(RuntimeError):
    """An algorithm could not produce a result from valid input.

    Parameters
    ----------
    message : str
        What failed and what to try instead.
    value : object, optional
        The offending value, when there is one.
    """

    def __init__(self, message: str, *, value: Any = None) -> None:
        super().__init__(message)
        self.value = value
