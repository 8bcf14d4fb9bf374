"""Config resolution lives in `mmfconfig` (below mmfdata and mmftrain); this name stays for existing imports."""
from mmfconfig.resolve import *  # noqa: F401,F403
from mmfconfig.resolve import (NOT_SUPPORTED, _check_sections, _resolve, merge, mmf_flags,  # noqa: F401
                               zoo_key_problem)
