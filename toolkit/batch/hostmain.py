"""Entry point of the task host process: ``python -m stacklab.toolkit.batch.hostmain``.

Kept apart from `taskhost` so that running it as ``__main__`` does not re-import a module
the package has already imported.
"""

import sys

from .taskhost import main

if __name__ == "__main__":
    sys.exit(main())
