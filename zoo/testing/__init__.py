"""Loopback servers shared by the tests and bench/: a fault-injecting Range server and a real nginx.

Never imported by the zoo itself; kept in the package so bench/ does not import from tests/.
"""
