"""Moved to zoo/testing/nginxserver.py (shared with bench/); kept so existing imports keep working."""
from zoo.testing.nginxserver import *  # noqa: F401,F403
from zoo.testing.nginxserver import NginxError, NginxServer  # noqa: F401
