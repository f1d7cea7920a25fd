"""``python -m zoomearth.server``: the same as ``zoomearth serve``."""

import sys

from zoomearth.server.cli import main

sys.exit(main())
