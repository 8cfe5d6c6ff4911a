"""`synergos` is the Driver SDK under the name the original package used: `from synergos import Driver`."""

from synergos_driver import *  # noqa: F403
from synergos_driver import __all__, __version__  # noqa: F401
