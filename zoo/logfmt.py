"""The one console log format of `mmf zoo`, `mmf data` and `mmf train`, on one stream, drawn around progress bars.

Stream: stderr, for every command. stdout carries a command's result only (`--json` documents, the folders
`mmf data pack` built, the PNG `mmf plot` drew), so a script can read it while a person watches the log; and the
progress bars (tqdm's default stream) are on stderr too, so log lines and bars share one stream and one cursor.
Lines go through `tqdm.write`, which lifts any bar on the terminal, prints the line and redraws the bar: no line
starts on a bar's row. A run's `train.log` keeps everything (tracebacks included) in the same format.
"""
from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s | %(levelname)s | %(name)s : %(message)s"  # MMF's own (mmf/utils/logger.py)
DATE = "%Y-%m-%dT%H:%M:%S"


def formatter() -> logging.Formatter:
    return logging.Formatter(FORMAT, DATE)


class _NoTraceback(logging.Formatter):
    """Console format: the error line only; its traceback goes to train.log."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text = saved


class ConsoleHandler(logging.StreamHandler):
    """stderr through tqdm.write: a progress bar on the terminal is cleared before the line and redrawn after."""

    def __init__(self):
        super().__init__(sys.stderr)
        self.setFormatter(_NoTraceback(FORMAT, DATE))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def to_console(*names: str, level: int = logging.INFO) -> None:
    """Send the loggers `names` to the console (once, however often asked), at `level`, not to the root's."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
            logger.addHandler(ConsoleHandler())
        logger.setLevel(level)
        logger.propagate = False


def say_to(logger: logging.Logger, quiet: bool = False):
    """A `say` for library calls (zoo's FetchOptions.say): a message starting `warning` as a warning, the others as
    info lines, dropped when `quiet`."""
    def say(message: str) -> None:
        if message.startswith("warning"):
            logger.warning(message.removeprefix("warning:").strip())
        elif not quiet:
            logger.info(message)
    return say
