"""The deferred ``rfc3987_syntax`` import keeps jsonschema's IRI checks exact."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys
import stacklab.toolkit.batch  # imports nbformat, and so jsonschema
deferred = 'rfc3987_syntax' not in sys.modules
import jsonschema
checker = jsonschema.FormatChecker()
iri = jsonschema.Draft7Validator({'format': 'iri'}, format_checker=checker)
reference = jsonschema.Draft7Validator({'format': 'iri-reference'}, format_checker=checker)
print(deferred, iri.is_valid('https://example.org/caf\\u00e9'), iri.is_valid('no scheme'),
      iri.is_valid('http://[bad'), reference.is_valid('../a%20b'), reference.is_valid('a b'),
      type(sys.modules['rfc3987_syntax']).__name__,
      hasattr(sys.modules['rfc3987_syntax'], 'RFC3987_SYNTAX_TERMS'))
"""


def test_rfc3987_syntax_is_loaded_on_first_iri_check_and_checks_as_before() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    deferred, valid, no_scheme, bad_host, ref_ok, ref_space, kind, real = out
    assert deferred == "True"  # not imported by stacklab's own import of jsonschema
    # the same verdicts as jsonschema with rfc3987_syntax imported up front
    assert (valid, no_scheme, bad_host, ref_ok, ref_space) == (
        "True",
        "False",
        "False",
        "True",
        "False",
    )
    assert kind == "module" and real == "True"  # the real package, imported on first use
