"""``python -m sessionstore`` is the ``sessionstore`` command (used to start daemons in tests and bench)."""

import sys

from sessionstore.cli import main

sys.exit(main())
