"""Cron schedules (the 5-field syntax of CronJob), evaluated in UTC, for the operator's own periodic
retraining: when did a schedule last fire in an interval."""

from __future__ import annotations

from datetime import datetime, timedelta

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
NAMES = {
    3: {m: i + 1 for i, m in enumerate(MONTHS)},
    4: {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}
RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
LOOKBACK = timedelta(days=7)


class CronError(ValueError):
    pass


def _field(text: str, index: int) -> set[int]:
    low, high = RANGES[index]
    values: set[int] = set()
    for part in text.lower().split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if base in ("*", "?"):
            start, end = low, high
        else:
            first, _, last = base.partition("-")
            start = _number(first, index)
            end = _number(last, index) if last else (high if step_text else start)
        if not (low <= start <= high and low <= end <= high) or step < 1:
            raise CronError(f"{text!r} is out of range {low}-{high}")
        values.update(range(start, end + 1, step))
    if index == 4 and 7 in values:  # Sunday is 0 and 7
        values = (values - {7}) | {0}
    return values


def _number(text: str, index: int) -> int:
    if text in NAMES.get(index, {}):
        return NAMES[index][text]
    if not text.isdigit():
        raise CronError(f"{text!r} is not a number")
    return int(text)


def parse(expression: str) -> tuple[set[int], set[int], set[int], set[int], set[int], bool, bool]:
    text = MACROS.get(expression.strip(), expression)
    fields = text.split()
    if len(fields) != 5:
        raise CronError(f"{expression!r} does not have 5 fields")
    minutes, hours, days, months, weekdays = (_field(f, i) for i, f in enumerate(fields))
    return minutes, hours, days, months, weekdays, fields[2] in ("*", "?"), fields[4] in ("*", "?")


def last_fire(expression: str, after: datetime, until: datetime) -> datetime | None:
    """The latest time in (after, until] at which the schedule fires (looking back at most a week)."""
    minutes, hours, days, months, weekdays, any_day, any_weekday = parse(expression)
    moment = until.replace(second=0, microsecond=0)
    floor = max(after, until - LOOKBACK)
    while moment > floor:
        weekday = (moment.weekday() + 1) % 7  # cron counts from Sunday
        day_ok = (
            (moment.day in days and weekday in weekdays)
            if any_day or any_weekday
            else (moment.day in days or weekday in weekdays)  # both restricted: either matches (cron's rule)
        )
        if moment.minute in minutes and moment.hour in hours and moment.month in months and day_ok:
            return moment
        moment -= timedelta(minutes=1)
    return None
