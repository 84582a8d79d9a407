"""Root pytest configuration: notebooks executed by pytest (``--nbmake tutorials``) run their
quick ``small`` version unless NPCOSTEFF_TUTORIAL_SIZE says otherwise."""

import os

os.environ.setdefault("NPCOSTEFF_TUTORIAL_SIZE", "small")
