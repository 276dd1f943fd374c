"""``python -m mtcache.coordinator``: the same as ``mtcache-coordinator``."""

import sys

from mtcache.cli import coordinator_main

sys.exit(coordinator_main())
