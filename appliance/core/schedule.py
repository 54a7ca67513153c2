"""Schedule expressions (EventBridge syntax) and when they fire. Pure: every function takes the time.

* ``rate(N minute|minutes|hour|hours|day|days)``, and ``rate(N second|seconds)`` as an extension
  (for tests and keep-warm pings): ticks every N units from the trigger's creation (its anchor),
  as EventBridge counts a rate from when the rule was created.
* ``cron(minutes hours day-of-month month day-of-week year)``, six fields as in EventBridge:
  ``*``, ``,``, ``-``, ``/``; ``?`` in day-of-month or day-of-week (exactly one of them must be ``?``
  unless both are ``*``); ``L`` in day-of-month (the month's last day); month names ``JAN``-``DEC``;
  day names ``SUN``-``SAT`` (1 = Sunday, as EventBridge numbers them). ``W`` and ``#`` are refused
  with a message. The fields are read in the trigger's time zone (IANA name, default UTC).

:func:`plan` is the firing decision: after downtime at most one missed tick is fired (the latest),
never a burst of them.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from appliance.core.errors import ValidationError

RATE_RE = re.compile(r"^rate\(\s*(\d{1,6})\s+(second|seconds|minute|minutes|hour|hours|day|days)\s*\)$")
CRON_RE = re.compile(r"^cron\((.*)\)$")
UNIT_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
MONTHS = {m.upper(): i for i, m in enumerate(calendar.month_abbr) if m}
DAYS = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}
#: Shortest rate(N seconds), so a schedule cannot become a busy loop.
MIN_RATE_S = 1
MAX_EXPR = 256
#: How far ahead a cron expression is searched for its next time (a year field may rule out the rest).
SEARCH_YEARS = 5
#: Missed cron ticks walked through after downtime to find the latest (then the search jumps to now).
MAX_SKIP = 2000


def _field(expr: str) -> ValidationError:
    return ValidationError(expr, field="schedule")


@dataclass(frozen=True)
class Rate:
    period_s: int

    def next_after(self, t: float, anchor: float) -> float:
        """The first tick strictly after ``t`` (epoch seconds) of ticks at ``anchor + k * period``."""
        if t < anchor:
            return anchor
        k = int((t - anchor) // self.period_s) + 1
        return anchor + k * self.period_s


@dataclass(frozen=True)
class Cron:
    minutes: frozenset
    hours: frozenset
    dom: frozenset | None        # None: "?" (any day)
    last_dom: bool
    months: frozenset
    dow: frozenset | None        # 1 = Sunday .. 7 = Saturday; None: "?"
    years: frozenset | None      # None: "*"
    zone: str = "UTC"

    def _day_ok(self, d: datetime) -> bool:
        dom_any = self.dom is None and not self.last_dom
        dow_any = self.dow is None
        dom_ok = (d.day in self.dom) if self.dom is not None else False
        if self.last_dom and d.day == calendar.monthrange(d.year, d.month)[1]:
            dom_ok = True
        dow_ok = ((d.isoweekday() % 7) + 1 in self.dow) if self.dow is not None else False
        if dom_any and dow_any:
            return True
        if dom_any:
            return dow_ok
        if dow_any:
            return dom_ok
        return dom_ok or dow_ok

    def next_after(self, t: float, anchor: float = 0.0) -> float:
        """The first time strictly after ``t`` that matches, in epoch seconds; raises when none within
        SEARCH_YEARS (a year field in the past)."""
        zone = ZoneInfo(self.zone)
        start = datetime.fromtimestamp(int(t) // 60 * 60 + 60, zone)  # the next whole minute
        day = start.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
        first = True
        for _ in range(366 * SEARCH_YEARS):
            if (self.years is None or day.year in self.years) and day.month in self.months and self._day_ok(day):
                for h in sorted(self.hours):
                    for m in sorted(self.minutes):
                        if first and (h, m) < (start.hour, start.minute):
                            continue
                        local = day.replace(hour=h, minute=m, tzinfo=zone)
                        # A time skipped by a DST change does not exist: ZoneInfo would shift it; skip it.
                        if local.astimezone(timezone.utc).astimezone(zone).replace(tzinfo=None) != \
                                local.replace(tzinfo=None):
                            continue
                        ts = local.timestamp()
                        if ts > t:
                            return ts
            day += timedelta(days=1)
            first = False
        raise ValidationError(f"the cron expression matches no time in the next {SEARCH_YEARS} years",
                              field="schedule")


    def prev_at_or_before(self, t: float) -> float | None:
        """The latest matching time at or before ``t`` (epoch seconds), or None within SEARCH_YEARS."""
        zone = ZoneInfo(self.zone)
        end = datetime.fromtimestamp(int(t) // 60 * 60, zone)  # the whole minute at or before t
        day = end.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
        first = True
        for _ in range(366 * SEARCH_YEARS):
            if (self.years is None or day.year in self.years) and day.month in self.months and self._day_ok(day):
                for h in sorted(self.hours, reverse=True):
                    for m in sorted(self.minutes, reverse=True):
                        if first and (h, m) > (end.hour, end.minute):
                            continue
                        local = day.replace(hour=h, minute=m, tzinfo=zone)
                        if local.astimezone(timezone.utc).astimezone(zone).replace(tzinfo=None) != \
                                local.replace(tzinfo=None):
                            continue
                        ts = local.timestamp()
                        if ts <= t:
                            return ts
            day -= timedelta(days=1)
            first = False
        return None


def _values(part: str, lo: int, hi: int, names: dict | None, what: str) -> frozenset:
    out = set()
    for item in part.split(","):
        step = 1
        if "/" in item:
            item, _, step_s = item.partition("/")
            if not step_s.isdigit() or int(step_s) < 1:
                raise _field(f"{what}: the step after '/' must be a positive integer, got {step_s!r}")
            step = int(step_s)
        if item == "*":
            a, b = lo, hi
        elif "-" in item:
            a_s, _, b_s = item.partition("-")
            a, b = _one(a_s, lo, hi, names, what), _one(b_s, lo, hi, names, what)
            if a > b:
                raise _field(f"{what}: range {item!r} runs backwards")
        else:
            a = _one(item, lo, hi, names, what)
            b = hi if step > 1 else a
        out.update(range(a, b + 1, step))
    return frozenset(out)


def _one(s: str, lo: int, hi: int, names: dict | None, what: str) -> int:
    if names and s.upper() in names:
        return names[s.upper()]
    if not s.isdigit() or not lo <= int(s) <= hi:
        raise _field(f"{what}: {s!r} is not a value from {lo} to {hi}" + (" or a name" if names else ""))
    return int(s)


def parse(expr: str, zone: str = "UTC") -> Rate | Cron:
    """A schedule expression, validated; every error names what is accepted."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR:
        raise _field(f"schedule must be a string of at most {MAX_EXPR} characters, such as 'rate(5 minutes)' "
                     "or 'cron(0 12 * * ? *)'")
    expr = expr.strip()
    m = RATE_RE.match(expr)
    if m:
        n, unit = int(m.group(1)), m.group(2).rstrip("s")
        if n < 1:
            raise _field("rate(N unit) needs N of at least 1")
        return Rate(period_s=max(MIN_RATE_S, n * UNIT_S[unit]))
    m = CRON_RE.match(expr)
    if not m:
        raise _field(f"schedule must be rate(N minutes|hours|days), rate(N seconds) or a six-field cron(...) "
                     f"expression; got {expr!r}")
    parts = m.group(1).split()
    if len(parts) != 6:
        raise _field(f"cron(...) takes six fields (minutes hours day-of-month month day-of-week year); "
                     f"got {len(parts)} in {expr!r}")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"timezone must be an IANA time zone such as 'UTC' or 'Europe/Paris'; got {zone!r}",
                              field="timezone") from None
    minute, hour, dom, month, dow, year = parts
    for p, what in ((dom, "day-of-month"), (dow, "day-of-week")):
        if "W" in p.upper() or "#" in p:
            raise _field(f"cron {what}: 'W' and '#' are not supported; list the days instead")
    if dom == "?" and dow == "?":
        raise _field("cron: day-of-month and day-of-week cannot both be '?'")
    if dom != "?" and dow != "?" and not (dom == "*" or dow == "*"):
        raise _field("cron: one of day-of-month and day-of-week must be '?' (EventBridge's rule)")
    last = dom.upper() == "L"
    return Cron(
        minutes=_values(minute, 0, 59, None, "cron minutes"),
        hours=_values(hour, 0, 23, None, "cron hours"),
        dom=None if dom in ("?",) or last or (dom == "*" and dow != "*" and dow != "?") else
        _values(dom, 1, 31, None, "cron day-of-month"),
        last_dom=last,
        months=_values(month, 1, 12, MONTHS, "cron month"),
        dow=None if dow in ("?",) or (dow == "*") else _values(dow, 1, 7, DAYS, "cron day-of-week"),
        years=None if year == "*" else _values(year, 1970, 2199, None, "cron year"),
        zone=zone,
    )


@dataclass(frozen=True)
class Plan:
    """``fire``: the tick to fire now (epoch seconds) or None; ``next``: the next tick after now."""
    fire: float | None
    next: float


def plan(schedule: Rate | Cron, *, anchor: float, last_tick: float | None, now: float) -> Plan:
    """What to fire at ``now``, given the last tick fired (None: never). Ticks missed while nobody was
    running collapse into one: the latest tick at or before ``now`` fires once, the rest are skipped.
    A schedule that never fired starts with its first tick after ``anchor`` (its creation)."""
    since = anchor if last_tick is None else last_tick
    due = schedule.next_after(since, anchor)
    if due > now:
        return Plan(None, due)
    # The latest tick <= now: at most one is fired after downtime.
    if isinstance(schedule, Rate):
        latest = anchor + ((now - anchor) // schedule.period_s) * schedule.period_s
        return Plan(latest, latest + schedule.period_s)
    latest = due
    for _ in range(MAX_SKIP):
        nxt = schedule.next_after(latest, anchor)
        if nxt > now:
            return Plan(latest, nxt)
        latest = nxt
    return Plan(latest, schedule.next_after(now, anchor))
