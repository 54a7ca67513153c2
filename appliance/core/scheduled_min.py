"""Scheduled min_instances (keep-warm on a timetable), as Alibaba Function Compute's scheduled
provisioned instances: a function's ``min_instances_schedule`` is a list of actions
``{"schedule": "cron(...)", "min_instances": N, "timezone": "Europe/Paris"}``; from each action's
time on, the function keeps N instances warm, until another action's time comes. Before any action
has fired (none in the last SEARCH_YEARS), the function's own ``min_instances`` applies.

For example more instances during working hours::

    [{"schedule": "cron(0 8 ? * MON-FRI *)", "min_instances": 5, "timezone": "Europe/Paris"},
     {"schedule": "cron(0 19 ? * MON-FRI *)", "min_instances": 0, "timezone": "Europe/Paris"}]

Pure: :func:`effective_min` takes ``now``.
"""

from __future__ import annotations

from appliance.core import schedule as sched
from appliance.core.errors import ValidationError

MAX_ACTIONS = 10
FIELD = "min_instances_schedule"


def validate(value, max_instances: int) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ACTIONS:
        raise ValidationError(f'{FIELD} must be a list of at most {MAX_ACTIONS} actions such as '
                              '{"schedule": "cron(0 8 ? * MON-FRI *)", "min_instances": 5}', field=FIELD)
    out = []
    for i, action in enumerate(value):
        where = f"{FIELD}[{i}]"
        if not isinstance(action, dict) or set(action) - {"schedule", "min_instances", "timezone"}:
            raise ValidationError(f"{where} must be an object with schedule, min_instances and optionally "
                                  "timezone", field=FIELD)
        zone = action.get("timezone", "UTC")
        expr = action.get("schedule")
        if not isinstance(expr, str) or not expr.strip().startswith("cron("):
            raise ValidationError(f"{where}.schedule must be a cron(...) expression; got {expr!r}", field=FIELD)
        if not isinstance(zone, str):
            raise ValidationError(f"{where}.timezone must be an IANA time zone name", field=FIELD)
        try:
            sched.parse(expr, zone)
        except ValidationError as exc:
            raise ValidationError(f"{where}: {exc.message}", field=FIELD) from None
        n = action.get("min_instances")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= max_instances:
            raise ValidationError(f"{where}.min_instances must be an integer from 0 to max_instances "
                                  f"({max_instances}); got {n!r}", field=FIELD)
        out.append({"schedule": expr.strip(), "min_instances": n, "timezone": zone})
    return out


def effective_min(actions: list[dict], default: int, now: float) -> tuple[int, dict | None]:
    """(min_instances in force at ``now``, the action that set it or None)."""
    best, best_at = None, None
    for action in actions:
        at = sched.parse(action["schedule"], action.get("timezone", "UTC")).prev_at_or_before(now)
        if at is not None and (best_at is None or at > best_at):
            best, best_at = action, at
    return (best["min_instances"], best) if best is not None else (default, None)
