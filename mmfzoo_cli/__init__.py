"""The `mmf` command line: one typer app that mounts each package's commands.

Nothing here imports torch: `mmf --help` and `mmf zoo ...` must start fast on a login node.
"""
