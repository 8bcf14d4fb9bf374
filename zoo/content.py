"""Is this the file? Judged by its first bytes, whatever the headers said (a mirror's HTML error page served with
200, a login portal): the check the install passes to the transfer engine, which does not know archive formats."""
from __future__ import annotations

from zoo.archive.formats import describe, sniff

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".gz", ".tar", ".zip", ".bz2", ".tbz2", ".xz", ".txz", ".zst", ".tzst")
_HTML = (b"<!doctype", b"<html", b"<head", b"<body")


def not_the_file(head: bytes, file_name: str) -> str | None:
    """Why these first bytes cannot be the start of `file_name`, or None."""
    name = file_name.lower()
    if name.endswith(ARCHIVE_SUFFIXES):
        return None if sniff(head) is not None or not head else f"its body is not an archive: {describe(head)}"
    if not name.endswith((".html", ".htm", ".xml")) and head[:4096].lstrip().lower().startswith(_HTML):
        return f"its body is an HTML page, not {file_name}"
    return None


def check_for(file_name: str):
    """The content check of one file, as the transfer engine takes it."""
    return lambda head: not_the_file(head, file_name)
