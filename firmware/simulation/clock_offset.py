"""Stepping a running simulated node's clock from outside its process.

A Raspberry Pi without a real-time clock steps its clock while running: NTP sets it right
some time after boot, a bad time server or a technician's ``date -s`` sets it wrong, forward or
back. A simulated node does the same through a small text file (``simulation.clock_offset_file``)
holding how far its clock is off true time::

    echo +6h  > clock-offset.txt     # six hours ahead
    echo -3h  > clock-offset.txt     # three hours behind
    echo 0    > clock-offset.txt     # right again (or delete the file)

The node reads the file about twice a second (``ClockOffsetFile.poll``, called from its loop) and
steps its ``OffsetClock`` when the offset changes. Only the node's clock steps: the simulated
world (weather, dryer physics, chips) keeps true time, as the sun does when a Pi's clock is
wrong. Write the file atomically (a temporary file, then rename) so that the node never reads
it half written.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

from cacao_dryer.clock import OffsetClock
from cacao_dryer.errors import ConfigError

log = logging.getLogger("cacao_dryer.node")

# A Pi without RTC restarts at the time fake-hwclock saved, or at its image's build date:
# months or a few years off. Ten years keeps every time inside what the stores can hold.
MAX_CLOCK_OFFSET_S = 3650 * 86_400.0
POLL_EVERY_S = 0.5  # real seconds between two reads of the file

_UNIT_S = {"": 1.0, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86_400.0}
_OFFSET = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(s|min|h|d)?")


def parse_clock_offset(text: str, where: str = "clock offset") -> float:
    """Seconds from a clock offset's text: a number of seconds, or with a unit ``s``, ``min``,
    ``h`` or ``d``; ``+`` or nothing is ahead of true time, ``-`` behind. Empty text (and
    anything after ``#``) is 0. ConfigError naming ``where`` otherwise.

    >>> parse_clock_offset("+6h"), parse_clock_offset("-90 min"), parse_clock_offset("")
    (21600.0, -5400.0, 0.0)
    """
    value = text.split("#", 1)[0].strip()
    if not value:
        return 0.0
    match = _OFFSET.fullmatch(value)
    if match is None:
        raise ConfigError(f"{where}: {value[:40]!r} is not a clock offset (seconds, or a number "
                          "with s, min, h or d: +6h, -3 h, -10800)")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2) or ""]
    if not math.isfinite(seconds) or abs(seconds) > MAX_CLOCK_OFFSET_S:
        raise ConfigError(f"{where}: clock offset {value!r} is more than 10 years")
    return seconds


class ClockOffsetFile:
    """Keeps ``clock``'s offset equal to what ``path`` says (a missing file says 0).

    ``poll()`` reads the file at most every ``every_s`` real seconds and steps the clock when
    the offset changed. A file that cannot be read or parsed is reported once (a warning in
    the node's log) and leaves the clock as it is: a typo must not stop the node.
    """

    def __init__(self, path: Path, clock: OffsetClock, *, every_s: float = POLL_EVERY_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self._every_s = every_s
        self._monotonic = monotonic
        self._next_read_at: float | None = None
        self._last_text: str | None = None

    def poll(self) -> float | None:
        """Read the file if it is time to; the step in seconds if the clock stepped, else None."""
        moment = self._monotonic()
        if self._next_read_at is not None and moment < self._next_read_at:
            return None
        self._next_read_at = moment + self._every_s
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            text = f"unreadable: {type(exc).__name__}"
            if text != self._last_text:
                log.warning("%s: cannot read the clock offset (%s); the clock stays %+.0f s off",
                            self.path, exc, self.clock.offset_s)
            self._last_text = text
            return None
        if text == self._last_text:
            return None
        self._last_text = text
        try:
            offset_s = parse_clock_offset(text, str(self.path))
        except ConfigError as exc:
            log.warning("%s; the clock stays %+.0f s off", exc, self.clock.offset_s)
            return None
        step_s = offset_s - self.clock.offset_s
        if step_s == 0:
            return None
        self.clock.set_offset(offset_s)
        log.info("%s: clock now %+.0f s off true time (a step of %+.0f s)", self.path,
                 offset_s, step_s)
        return step_s
