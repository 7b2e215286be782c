"""``stacklab.toolkit`` imports its modules on first use, with the eager package's names."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys
import stacklab.toolkit as tk
light = not any(m in sys.modules for m in ('scipy', 'astropy', 'galsim'))
import stacklab.toolkit.coadd  # the submodule named like a function
from stacklab.toolkit.process_frame import FrameResult
names = (
    callable(tk.coadd) and not isinstance(tk.coadd, type(sys)),
    callable(tk.process_frame) and not isinstance(tk.process_frame, type(sys)),
    tk.io.read_exposure is tk.read_exposure,  # a submodule not imported before
    tk.FrameResult is FrameResult,
    set(tk.__all__) == set(tk._MODULE_OF),  # the lazy table and __all__ agree
    all(getattr(tk, n) is not None for n in tk.__all__),  # and every name resolves
)
try:
    tk.no_such_thing
    missing = False
except AttributeError:
    missing = True
print(light, all(names), missing)
"""


def test_the_package_imports_lazily_and_keeps_its_names() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "True", "True"]
