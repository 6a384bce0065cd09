"""Meta timestamps in, Genesys ISO-8601 times out, without `datetime` on the hot path.

Meta sends Unix **seconds** as a string; milliseconds have been seen in the wild. A value of 1e11 or more is taken as
milliseconds (1e11 s is the year 5138, 1e11 ms is 1973): both normalise to float seconds.
Genesys wants `2026-06-08T20:59:43.000Z`. `datetime.strftime` would be a large part of the transform
(docs/decisions.md): here the date comes from `time.gmtime` once per day, the time of day from lookup tables, and the
result is cached with the parsed timestamp, so the usual case is two dict lookups.
"""

from __future__ import annotations

import math
import time

_MILLIS_FROM = 1e11
_LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: Genesys's format has four year digits
_LATEST_INTEGER = 253402300799999  # the same in milliseconds
# Both caches are cleared whole when full: a stream of webhooks carries a few distinct seconds at a time.
_CACHE_MAX = 4096  # entries
_parsed: dict[str, float] = {}  # Meta's timestamp text -> seconds
_times: dict[float, str] = {}  # seconds -> Genesys time text
_dates: dict[int, str] = {}  # days since 1970 -> "YYYY-MM-DDT"
_TWO = [f"{n:02d}" for n in range(60)]
_THREE = [f"{n:03d}" for n in range(1000)]


class InvalidTimestamp(ValueError):
    """The message's timestamp is missing, not a number, or out of range."""


def parse_meta_timestamp(value: object) -> float:
    """Unix seconds as a float from Meta's `timestamp` (str or number; seconds or milliseconds)."""
    if isinstance(value, str):
        cached = _parsed.get(value)
        if cached is not None:
            return cached
        seconds = _parse_text(value)
        if len(_parsed) >= _CACHE_MAX:
            _parsed.clear()
        _parsed[value] = seconds
        return seconds
    if isinstance(value, float):
        return _checked(value)
    if isinstance(value, int) and not isinstance(value, bool):
        # JSON integers have no size limit: float() of one with a few hundred digits raises OverflowError.
        if not 0 <= value <= _LATEST_INTEGER:
            raise InvalidTimestamp(f"out of range: {str(value)[:40]}")
        return _checked(float(value))
    raise InvalidTimestamp("missing")


def _parse_text(value: str) -> float:
    # int() refuses some of what str.isdigit() accepts ("²"); too long a text is not a time, and would be cached.
    try:
        if len(value) > 40:
            raise ValueError
        seconds = float(int(value)) if len(value) <= 20 and value.isdigit() else float(value)
    except ValueError:
        raise InvalidTimestamp(f"not a number: {value[:40]!r}") from None
    return _checked(seconds)  # out of its try: InvalidTimestamp is a ValueError too, and says why itself


def _checked(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidTimestamp(f"out of range: {seconds!r}")
    if seconds >= _MILLIS_FROM:
        seconds /= 1000.0
    if seconds > _LATEST:
        raise InvalidTimestamp(f"out of range: {seconds!r}")
    return seconds


def iso_time(seconds: float) -> str:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds) for Unix seconds in [0, 9999-12-31]."""
    text = _times.get(seconds)
    if text is None:
        text = _format(seconds)
        if len(_times) >= _CACHE_MAX:
            _times.clear()
        _times[seconds] = text
    return text


def _format(seconds: float) -> str:
    whole = int(seconds)
    millis = round((seconds - whole) * 1000.0)
    if millis >= 1000:  # x.9995 and up rounds into the next second
        whole, millis = whole + 1, 0
    day, in_day = divmod(whole, 86400)
    date = _dates.get(day)
    if date is None:
        t = time.gmtime(day * 86400)
        date = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        if len(_dates) >= _CACHE_MAX:
            _dates.clear()
        _dates[day] = date
    hours, rest = divmod(in_day, 3600)
    minutes, secs = divmod(rest, 60)
    # table lookups and concatenation: 0.4 µs, where one "%02d" format of all six fields takes 1.5 µs
    return date + _TWO[hours] + ":" + _TWO[minutes] + ":" + _TWO[secs] + "." + _THREE[millis] + "Z"
