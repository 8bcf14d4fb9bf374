"""Moved to zoo/testing/faultserver.py (shared with bench/); kept so existing imports keep working."""
from zoo.testing.faultserver import *  # noqa: F401,F403
from zoo.testing.faultserver import HTML_ERROR_PAGE, FaultServer, Faults  # noqa: F401
