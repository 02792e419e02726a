"""Progress with a total and the time left, readable on a terminal and in a log.

On a terminal, a tqdm bar on stderr. Elsewhere (a weasel step piped to a log
file, CI) a tqdm bar would write carriage returns into one endless line, so a
``LineProgress`` prints one plain line every ``interval`` seconds instead::

    label: 4,096/32,644 docs (12.5%), 41.2 docs/s, elapsed 1:39, ~11:33 left

``spacy-distill.ProgressLogger.v1`` does the same for ``spacy train``: the
stock console table, plus the steps done out of ``training.max_steps`` and the
time left (an upper bound when early stopping ends training sooner).
"""

import sys
import time
from typing import IO, Any, Callable, Dict, Optional, Tuple

from spacy.util import registry

#: Seconds between two lines when stderr is not a terminal.
LOG_INTERVAL = 30.0


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class LineProgress:
    """A progress counter that prints a plain line every ``interval`` seconds.

    total (Optional[int]): Units expected, if known.
    desc (str): What is counted (the line's prefix).
    unit (str): Name of one unit.
    stream (IO): Where lines go.
    interval (float): Seconds between lines.
    """

    def __init__(self, total: Optional[int], desc: str, unit: str, stream: IO, interval: float = LOG_INTERVAL) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream
        self.interval = interval
        self.n = 0
        self.start = time.monotonic()
        self.last = self.start

    def line(self) -> str:
        """The current status line.

        RETURNS (str): ``desc: n/total unit (pct), rate, elapsed, time left``.
        """
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.n / elapsed
        done = f"{self.n:,}"
        if self.total:
            done += f"/{self.total:,} {self.unit}s ({100.0 * self.n / self.total:.1f}%)"
        else:
            done += f" {self.unit}s"
        text = f"{self.desc}: {done}, {rate:.1f} {self.unit}s/s, elapsed {_clock(elapsed)}"
        if self.total and rate > 0 and self.n < self.total:
            text += f", ~{_clock((self.total - self.n) / rate)} left"
        return text

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; print a line if ``interval`` has passed.

        n (int): Units done.
        """
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            print(self.line(), file=self.stream, flush=True)

    def clear(self) -> None:
        """Nothing to clear on a line-based stream (tqdm's API)."""

    def refresh(self) -> None:
        """Nothing to redraw on a line-based stream (tqdm's API)."""

    def close(self) -> None:
        """Print the final line."""
        print(self.line(), file=self.stream, flush=True)


def progress_bar(
    total: Optional[int], desc: str, unit: str = "doc", enabled: bool = True, stream: Optional[IO] = None, initial: int = 0
) -> Any:
    """A progress counter with ``update``/``close``: tqdm on a terminal, lines elsewhere.

    total (Optional[int]): Units expected, if known.
    desc (str): What is counted.
    unit (str): Name of one unit.
    enabled (bool): False gives a silent counter.
    stream (Optional[IO]): Output (default: stderr).
    initial (int): Units already done.
    RETURNS (Any): A ``tqdm`` or ``LineProgress``.
    """
    from tqdm import tqdm

    stream = stream if stream is not None else sys.stderr
    if not enabled or stream.isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=stream, disable=not enabled, initial=initial)
    bar = LineProgress(total, desc, unit, stream)
    bar.n = initial
    return bar


@registry.loggers("spacy-distill.ProgressLogger.v1")
def progress_logger_v1(
    console_output: bool = True, output_file: Optional[str] = None, interval: float = LOG_INTERVAL
) -> Callable:
    """spaCy's console table (``spacy.ConsoleLogger.v3``) plus progress over ``training.max_steps``.

    console_output (bool): Print the table of scores.
    output_file (Optional[str]): Also write the logs as JSONL here.
    interval (float): Seconds between progress lines when stderr is not a terminal.
    RETURNS (Callable): The logger's ``setup_printer``.
    """
    console = registry.loggers.get("spacy.ConsoleLogger.v3")(
        progress_bar=None, console_output=console_output, output_file=output_file
    )

    def setup_printer(nlp: Any, stdout: IO = sys.stdout, stderr: IO = sys.stderr) -> Tuple[Callable, Callable]:
        log_table, finalize = console(nlp, stdout, stderr)
        total = int(nlp.config["training"]["max_steps"]) or None
        bar = progress_bar(total, "train", unit="step", stream=stderr)
        if isinstance(bar, LineProgress):
            bar.interval = interval

        def log_step(info: Optional[Dict[str, Any]]) -> None:
            bar.update(1)
            if info is not None:
                # Keep the bar off the table's rows on a terminal.
                bar.clear()
                log_table(info)
                bar.refresh()

        def close() -> None:
            bar.close()
            finalize()

        return log_step, close

    return setup_printer
