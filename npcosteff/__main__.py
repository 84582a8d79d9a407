"""``python -m npcosteff``: the same command line as the ``npcosteff`` script (npcosteff.cli)."""

import sys

from .cli import main

sys.exit(main())
