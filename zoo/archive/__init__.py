"""Archives: recognise the format, decode it, write its members through the safe tree, stream or from a file.

    from zoo.archive import detect_format, extract_archive, StreamExtractor
    files = extract_archive(path, tmp_dest)       # [(relative posix path, size, xxh3-128), ...]

Modules: `formats` (telling formats apart by content), `decoders` (decompressors), `safetree` (every write,
with the safety rules), `stream` (tar members from a byte stream; `StreamExtractor`), `extract` (files: tar, zip,
single compressed file), `limits` (the one bomb policy, bytes on disk and entries, honouring MMF_ZOO_MAX_EXTRACT_BYTES and
MMF_ZOO_MAX_EXTRACT_ENTRIES).
"""
from zoo.archive.extract import detect_format, extract_archive
from zoo.archive.limits import ENTRIES_ENV, LIMIT_ENV, extract_limit
from zoo.archive.stream import StreamExtractor

__all__ = ["detect_format", "extract_archive", "StreamExtractor", "extract_limit", "LIMIT_ENV", "ENTRIES_ENV"]
