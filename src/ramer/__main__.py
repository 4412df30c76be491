"""``python -m ramer`` (what ``torchrun -m ramer`` runs)."""

import sys

from ramer.cli import main

sys.exit(main())
