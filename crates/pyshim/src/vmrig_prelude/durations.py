"""Durations from test scripts (seconds or `timedelta`) and NixOS's `retry`."""

import datetime
import math
import time

from .errors import RequestedAssertionFailed

_MAX_SECONDS = 365 * 24 * 3600


def _seconds(value, name="timeout", default=None):
    """A duration argument in seconds, or an error naming the argument."""
    if value is None:
        return default
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    else:
        raise TypeError(f"{name}={value!r}: expected a number of seconds or a datetime.timedelta")
    if not (math.isfinite(seconds) and 0 <= seconds <= _MAX_SECONDS):
        raise ValueError(
            f"{name}={value!r}: expected a number of seconds from 0 to {_MAX_SECONDS} (a year)"
        )
    return seconds


def retry(fn, timeout_seconds=900):
    """Calls fn(False) every second until it returns True or time is up, then fn(True)."""
    # The message shows the timeout as given (5, not 5.0), as NixOS's does.
    shown = timeout_seconds if isinstance(timeout_seconds, (int, float)) else None
    timeout_seconds = _seconds(timeout_seconds, "timeout_seconds")
    start = time.monotonic()
    while time.monotonic() - start < timeout_seconds:
        if fn(False):
            return
        time.sleep(1)
    elapsed = time.monotonic() - start
    if not fn(True):
        raise RequestedAssertionFailed(
            f"action timed out after {elapsed:.2f} seconds "
            f"(timeout={timeout_seconds if shown is None else shown})"
        )
