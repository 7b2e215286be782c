"""Run every benchmark script in this folder (``make bench``) and keep their output.

Each ``bench_*.py`` prints its own table; this runner tees it to
``bench-output/<name>.txt`` and reports which scripts failed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "bench-output"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, check=False
        )
        text = result.stdout + (f"\n[stderr]\n{result.stderr}" if result.returncode else "")
        print(text, flush=True)
        (OUT / f"{script.stem}.txt").write_text(text)
        if result.returncode:
            failed.append(script.name)
    print(f"benchmarks done; outputs in {OUT}" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
