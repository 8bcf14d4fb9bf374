"""What the parts of a transfer (strategies, crosscheck, cursor, partials, repair) may read and call on the engine.

The parts take the engine as `t`; this is its type, so "what does a strategy depend on" is the list below and
nothing else. `Transfer` declares all of it in `__init__` and fills the attempt's state (journal, board, fd,
checks) before any worker starts. Verdicts on mirrors go through `pool.judge` (zoo/transfer/verdicts.py) or
`convict` / `outvoted` (which also refetch what the mirror served).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from zoo.errors import DiskError
    from zoo.journal import Journal
    from zoo.transfer.board import ChunkBoard, Partial
    from zoo.transfer.crosscheck import CrossCheck
    from zoo.transfer.mirror import Mirror
    from zoo.transfer.options import TransferOptions
    from zoo.transfer.pool import MirrorPool


class Context(Protocol):
    name: str
    opts: TransferOptions
    part: Path
    sha256: str | None
    chunk_hashes: list[str] | None
    pool: MirrorPool
    journal: Journal | None  # set when an attempt begins
    board: ChunkBoard | None  # set when its transfer begins; None again for the repair (the workers are gone)
    fd: int  # the partial file, open while the transfer or the repair runs
    checks: CrossCheck | None

    def settle(self, i: int, partial: Partial, data: bytes | None = None) -> bool: ...

    def count(self, n: int, extra: bool = False) -> None: ...

    def convict(self, m: Mirror | None, reason: str, requeue: bool = True) -> None: ...

    def outvoted(self, m: Mirror, reason: str) -> None: ...

    def disk_error(self, exc: OSError, doing: str) -> DiskError: ...

    def feed(self, view: memoryview) -> None: ...

    def stop_sink(self, why: str) -> None: ...
