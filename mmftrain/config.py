"""Config resolution lives in `mmfconfig` (below mmfdata and mmftrain); this name stays for existing imports."""
from mmfconfig.resolve import *  # noqa: F401,F403
