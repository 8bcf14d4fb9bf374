"""The transfer engine: one file, many mirrors, N connections, crash-safe and verified as it arrives.

Flow: the mirror pool probes mirrors in parallel and the candidates settle which file (size) to try by evidence
-> the chunk board splits the file into chunks -> workers fetch chunks with Range (+If-Range) from the best
measured mirror (strategies: range, sequential, race, split), recording which mirror served which bytes, a chunk
in flight journaled in steps -> each finished chunk is hashed (xxh3-128), fsynced and journaled, and a sample of
it is cross-checked against another mirror -> the in-order cursor reads the contiguous prefix back, feeds the
whole-file sha256 and an optional sink (the streaming extractor) -> on a sha256 mismatch the repair step compares
the served ranges with other mirrors and the locator says which to swap, or, when the file is wrong as a whole,
the next candidate gets its turn.

Modules, one job each: options (settings and result), http (the transport), mirror (one mirror's health), pool (mirrors: probes, health, verdicts), candidates (which
file: sizes and versions tried in turn), board (chunk states and provenance, one lock), strategies (how a chunk is
fetched), partials (chunks in flight across runs), crosscheck (consensus sampling), cursor (in-order verify),
locate (the pure bad-range locator), repair (sha256 failure), verdicts (the one place a mirror is blamed, and
the record of it), rechunk (a partial download re-verified into another chunk size), context (the type of what
the parts read from the engine), engine (wires them).
See zoo/journal.py for the crash-safety invariant, http (transport: what is accepted from a server, failures
classified) and mirror (one mirror's health record).
"""
from zoo.transfer.options import TransferOptions, TransferResult

__all__ = ["Transfer", "TransferOptions", "TransferResult"]


def __getattr__(name: str):
    if name == "Transfer":  # lazily: the engine pulls in requests, which `mmf --help` does not need
        from zoo.transfer.engine import Transfer

        return Transfer
    raise AttributeError(f"module 'zoo.transfer' has no attribute {name!r}")
