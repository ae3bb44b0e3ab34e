"""``python -m bridge`` runs the ``meshbridge`` command."""

import sys

from bridge.cli import main

sys.exit(main())
