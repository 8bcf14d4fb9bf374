"""Settings of a transfer and what it reports."""
from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1 << 20
BLOCK = 1 << 20  # read / pwrite unit
# a chunk in flight is journaled (data fdatasynced first) at most this often, once this much is new: a SIGKILL
# loses at most about a second of each connection's bytes, and a fast link (chunks done within it) pays nothing
PARTIAL_EVERY = 1.0
PARTIAL_MIN = 64 << 10
DEFAULT_MIN_RATE = 10_000.0  # bytes/s per connection; a mirror below it loses its chunks to a faster one


OFFLINE_ENV = "MMF_ZOO_OFFLINE"


def offline_env(environ=None) -> bool:
    """MMF_ZOO_OFFLINE=1 (anything but empty or 0): no network. Read here only; every TransferOptions honours it,
    so the CLI, `zoo.fetch` and `mmf train`'s automatic fetch agree."""
    import os

    return (os.environ if environ is None else environ).get(OFFLINE_ENV, "") not in ("", "0")


@dataclass
class TransferOptions:
    connections: int = 8
    chunk_size: int = 8 * MiB
    stall_timeout: float = 30.0  # silence, headers, and the window over which --min-rate is judged
    connect_timeout: float = 10.0
    min_rate: float = DEFAULT_MIN_RATE  # 0 = off; only applied while another mirror could take over
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_failures: int = 8  # consecutive transient failures before a mirror is dropped
    crosscheck: float = 0.02  # share of the file sampled against a second mirror when there are no chunk hashes
    offline: bool = False  # True also when MMF_ZOO_OFFLINE is set (see __post_init__)

    def __post_init__(self) -> None:
        self.offline = bool(self.offline) or offline_env()


@dataclass
class TransferResult:
    size: int
    sha256: str
    fetched: int  # bytes received from the network (or local mirrors) in this run
    resumed: int  # bytes of the partial file reused from an earlier run
    mirrors: dict[str, str] = field(default_factory=dict)  # url -> "ok (N bytes)" or the reason it was dropped
    sink_error: str | None = None
    extra: int = 0  # of `fetched`, bytes read to cross-check mirrors or to repair the file (not file data)
    restarted: str | None = None  # why a partial download from an earlier run was not reused (None: it was)
