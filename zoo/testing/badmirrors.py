"""Bad-mirror scenarios of issue 9: one good mirror next to a bad one (or a lone unstable one), served by
FaultServers. Shared by tests/test_zoo_bad_mirrors.py (small archives) and bench/bad_mirrors.py (the issue's
30-50 MB archives through `mmf zoo fetch`).

    with scenario("corrupt", workdir, archive_path, rel) as sc:
        urls = sc.urls            # in the order the user listed them (the bad one first unless the case says)
        ...fetch...
        sc.fault_fired()          # True when the bad server actually served its fault
        sc.wire_bytes()           # body bytes both servers sent
"""
from __future__ import annotations

import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from zoo.testing.faultserver import FaultServer, Faults, _xor_bytes

HTML_PAGE = b"<!DOCTYPE html><html><head><title>Mirror maintenance</title></head><body>" + b"<p>back soon</p>" * 6000


@dataclass
class Case:
    name: str
    what: str
    bad_file: str = "same"  # same | outdated | truncated | html | none (no bad mirror: the good one is faulty)
    bad_faults: list = field(default_factory=list)
    good_faults: list = field(default_factory=list)
    bad_first: bool = True
    reason: str = ""  # regex on the bad mirror's drop reason ("" when being outpaced is enough)
    wire: float = 1.5  # bound on the bytes both servers send, in archives (a wrong file of another size costs its
    #   own bytes once: it is only known wrong when its sha256 fails)


CASES = {c.name: c for c in [
    Case("corrupt", "flips one byte in every body", bad_faults=[Faults(flip_per_body=True)], reason="different bytes|xxh3"),
    Case("corrupt+flaky", "flips one byte in every body; the good mirror resets connections",
         bad_faults=[Faults(flip_per_body=True)], good_faults=[Faults(reset_after=-1)], reason="different bytes|xxh3"),
    Case("outdated", "an older file of the same size", bad_file="outdated", reason="sha256|xxh3|outvoted"),
    Case("wrong-size", "a truncated copy (another size), listed first", bad_file="truncated", reason="bytes"),
    Case("html", "an HTML page sent as application/octet-stream, listed first", bad_file="html", reason="not an archive"),
    Case("header-tarpit", "sends its headers at 2 bytes/s, listed first", bad_faults=[Faults(header_rate_bps=2)]),
    Case("body-tarpit", "sends the body at 2 bytes/s after 16 KiB, listed first", bad_faults=[Faults(rate_bps=2)]),
    Case("body-tarpit-2nd", "sends the body at 2 bytes/s after 16 KiB, listed second",
         bad_faults=[Faults(rate_bps=2)], bad_first=False),
    Case("unstable-etag", "a lone mirror whose ETag changes on every request", bad_file="none",
         good_faults=[Faults(etag_per_request=True)]),
    Case("reset-300k", "a lone mirror that resets every 300 KB (scaled to the chunk size)", bad_file="none",
         good_faults=[Faults(reset_after=-2)]),
    Case("stale-size", "another archive of 0.7x the size (no size in the manifest), listed first",
         bad_file="stale", reason="sha256|chunk hashes", wire=2.0),
    Case("liar-total", "the right file, but Content-Range totals claim 1 MiB more, listed first",
         bad_faults=[Faults(claim_extra=1 << 20)], reason="last bytes|chunk hashes"),
]}


def _bad_copy(kind: str, archive: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = archive.read_bytes()
    if kind == "same":
        shutil.copyfile(archive, dest)
    elif kind == "outdated":  # same size and header, other bytes after the first 4 KiB, an older Last-Modified
        dest.write_bytes(data[:4096] + bytes(_xor_bytes(bytearray(data[4096:]), 0x55)))
        old = time.time() - 86400
        os.utime(dest, (old, old))
    elif kind == "truncated":
        dest.write_bytes(data[: len(data) * 7 // 10])
    elif kind == "stale":  # another file (same archive header, other bytes) of 0.7x the size
        dest.write_bytes(data[:4096] + bytes(_xor_bytes(bytearray(data[4096: len(data) * 7 // 10]), 0x55)))
    elif kind == "html":
        dest.write_bytes(HTML_PAGE)


class Scenario:
    def __init__(self, case: Case, good: FaultServer, bad: FaultServer | None, rel: str):
        self.case, self.good, self.bad, self.rel = case, good, bad, rel
        servers = [good] if bad is None else ([bad, good] if case.bad_first else [good, bad])
        self.roots = [s.url for s in servers]
        self.urls = [s.url_for(rel) for s in servers]
        self.bad_url = (bad or good).url_for(rel)

    def fault_fired(self) -> bool:
        """The bad server answered with its fault at least once (a bad file served, or a fault rule used)."""
        if self.bad is None:
            return any(rule.used for rule in self.good.faults)
        if self.case.bad_faults:
            return any(rule.used for rule in self.bad.faults)
        return self.bad.stats.requests[self.rel] > 0 and self.bad.stats.bytes_sent[self.rel] > 0

    def wire_bytes(self) -> int:
        servers = [self.good] + ([self.bad] if self.bad else [])
        for s in servers:
            s.stats.wait_idle(2.0)
        return sum(sum(s.stats.bytes_sent.values()) for s in servers)


@contextmanager
def scenario(name: str, workdir: Path, archive: Path, rel: str, chunk_size: int = 8 << 20):
    """Serve `archive` at `rel` from a good mirror and the case's bad mirror (both FaultServers)."""
    case = CASES[name]
    flaky = max(100_000, chunk_size * 2 // 5)  # reset_after=-1 in a case: resets inside every chunk request
    # reset_after=-2: every 300 KB of 8 MiB chunks (the link), in proportion for smaller chunks
    flaky2 = max(20_000, chunk_size * 300_000 // (8 << 20))
    good_root, bad_root = Path(workdir) / "good", Path(workdir) / "bad"
    (good_root / rel).parent.mkdir(parents=True, exist_ok=True)
    if not (good_root / rel).exists():
        shutil.copyfile(archive, good_root / rel)
    with ExitStack() as stack:
        good = stack.enter_context(FaultServer(good_root, faults=_rules(case.good_faults, flaky, flaky2)))
        bad = None
        if case.bad_file != "none":
            _bad_copy(case.bad_file, archive, bad_root / rel)
            bad = stack.enter_context(FaultServer(bad_root, faults=_rules(case.bad_faults, flaky, flaky2)))
        yield Scenario(case, good, bad, rel)


def _fields(rule: Faults) -> dict:
    """A fresh copy of a rule's settings (CASES is shared: its rules must not carry counters across runs)."""
    from dataclasses import fields

    return {f.name: getattr(rule, f.name) for f in fields(rule) if not f.name.startswith("_")}


def _rules(rules: list, flaky: int, flaky2: int) -> list:
    out = [Faults(**_fields(r)) for r in rules]
    for r in out:
        if r.reset_after in (-1, -2):
            r.reset_after = flaky if r.reset_after == -1 else flaky2
    return out
