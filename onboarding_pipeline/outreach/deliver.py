"""One delivery run: today's treated queue rows (and rows still due from earlier days) through
suppression, quiet hours and the daily limits, then each channel's adapter.

Held-out rows never enter: they are filtered out of the queue here (and carry channel `none`
there), so no channel, person or workload sees them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import ibis
import pandas as pd

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.engagement.queue import NO_CHANNEL, text_or_none
from onboarding_pipeline.outreach import email as email_channel
from onboarding_pipeline.outreach import human as human_channel
from onboarding_pipeline.outreach import in_app as in_app_channel
from onboarding_pipeline.outreach.ledger import (
    DUE,
    EXPIRED,
    FAILED,
    SENDING,
    SUPPRESSED,
    DeliveryLedger,
    delivery_key,
    message_key,
)
from onboarding_pipeline.outreach.resource import OutreachResource
from onboarding_pipeline.outreach.rules import (
    Suppression,
    in_quiet_hours,
    read_suppression_file,
    user_timezone,
)
from onboarding_pipeline.reporting.delivery import deployment_id
from onboarding_pipeline.reporting.mail import EmailResource
from onboarding_pipeline.reporting.slack import SlackResource
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.tables import (
    INTERVENTION_QUEUE,
    MILESTONE_PROGRESS,
    NUDGES,
    RAW_EVENTS,
    RAW_USERS,
)

CHANNELS = ("in_app", "email", "human")
LOCK = "intervention-deliveries"


@dataclass
class DeliveryRun:
    """What one run did."""

    rows: pd.DataFrame  # the ledger rows this run read or changed
    # (channel, status) -> rows this run moved there (sent, outbox, failed, sending, ...)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    already_delivered: int = 0  # queue rows whose message was final before this run
    limited: Counter[str] = field(default_factory=Counter)  # left due: daily limit
    quiet_hours: Counter[str] = field(default_factory=Counter)  # left due: quiet hours
    suppressed: Counter[str] = field(default_factory=Counter)
    expired: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # channel -> why it stopped
    outbox: Path | None = None
    export: Path | None = None


def treated_queue(warehouse: WarehouseResource) -> pd.DataFrame:
    """Today's queue without held-out rows, with the nudge text (the `nudges` table's where
    written, else the queue's template)."""
    queue = warehouse.table(INTERVENTION_QUEUE.name)
    rows = warehouse.execute(queue.filter(~queue.holdout & (queue.channel != NO_CHANNEL)))
    nudges = warehouse.execute(
        warehouse.table(NUDGES.name).select("user_id", "next_action", nudge="message")
    )
    rows = rows.merge(nudges, on=["user_id", "next_action"], how="left")
    rows["message"] = rows.nudge.where(rows.nudge.notna(), rows.message)
    return rows


def _people(warehouse: WarehouseResource, user_ids: list[str]) -> dict[str, dict[str, Any]]:
    users = warehouse.table(RAW_USERS.name)
    frame = warehouse.execute(
        users.filter(users.user_id.isin(user_ids)).select(
            "user_id", "email", "first_name", "company", "attributes"
        )
    )
    return {
        str(row["user_id"]): {key: text_or_none(value) for key, value in row.items()}
        for row in frame.to_dict("records")
    }


def moved_on(
    warehouse: WarehouseResource, user_ids: list[str], config: ProductConfig
) -> dict[str, str]:
    """Users who, since they were queued, activated (an aha event) or left (a terminal
    event): user id -> why their open rows expire instead of going out."""
    names = {
        **dict.fromkeys(config.aha_events, "activated"),
        **{name: "left" for name in config.terminal_events},
    }
    if not user_ids:
        return {}
    table = warehouse.table(RAW_EVENTS.name)
    hits = warehouse.execute(
        table.filter(table.user_id.isin(user_ids) & table.event_name.isin(list(names)))
        .group_by("user_id", "event_name")
        .aggregate(at=table.timestamp.min())
        .order_by("at")
    )
    found: dict[str, str] = {}
    for user, event in zip(hits.user_id.astype(str), hits.event_name.astype(str), strict=True):
        found.setdefault(user, f"user {names[event]} ({event}) since it was queued")
    return found


def _unsubscribed(
    warehouse: WarehouseResource, user_ids: list[str], events: list[str]
) -> dict[str, str]:
    if not user_ids or not events:
        return {}
    table = warehouse.table(RAW_EVENTS.name)
    hits = warehouse.execute(
        table.filter(table.user_id.isin(user_ids) & table.event_name.isin(events))
        .group_by("user_id")
        .aggregate(event_name=table.event_name.min())
    )
    return dict(zip(hits.user_id.astype(str), hits.event_name.astype(str), strict=True))


def _timelines(
    warehouse: WarehouseResource, user_ids: list[str], latest: int
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """Per user: their milestones in path order, and their `latest` events, newest first."""
    progress = warehouse.table(MILESTONE_PROGRESS.name)
    milestones = warehouse.execute(
        progress.filter(progress.user_id.isin(user_ids)).order_by(["user_id", "position"])
    )
    events = warehouse.table(RAW_EVENTS.name)
    ranked = events.filter(events.user_id.isin(user_ids)).mutate(
        _rank=ibis.row_number().over(group_by="user_id", order_by=ibis.desc("timestamp"))
    )
    recent = warehouse.execute(
        ranked.filter(ranked._rank < latest)  # row_number() counts from 0
        .select("user_id", "event_name", "timestamp")
        .order_by(["user_id", ibis.desc("timestamp")])
    )
    by_user: dict[str, list[dict[str, Any]]] = {}
    for row in milestones.to_dict("records"):
        by_user.setdefault(str(row["user_id"]), []).append(row)
    last: dict[str, list[dict[str, Any]]] = {}
    for row in recent.to_dict("records"):
        last.setdefault(str(row["user_id"]), []).append(row)
    return by_user, last


def deliver_interventions(
    warehouse: WarehouseResource,
    config: ProductConfig,
    *,
    email: EmailResource,
    slack: SlackResource,
    outreach: OutreachResource,
    outbox_root: Path,
    export_root: Path,
    now: datetime,
    suppression_file: Path | None = None,
    log: Callable[[str], None] = print,
) -> DeliveryRun:
    """Deliver what is due at `now` (the data's now in the asset: replays give the same
    answers). One run at a time per warehouse (a lock): a concurrent run waits, then finds the
    ledger's rows and sends nothing twice."""
    settings = config.interventions.delivery
    today = now.date()
    outbox = outbox_root / today.isoformat()
    result = DeliveryRun(rows=pd.DataFrame(), outbox=outbox)
    queue = treated_queue(warehouse)
    keys = [
        delivery_key(e, u, s, a)
        for e, u, s, a in zip(
            queue.experiment, queue.user_id, queue.escalation_step, queue.next_action, strict=True
        )
    ]
    deployment: list[str] = []

    def key_of(key: str) -> str:
        if not deployment:  # read (or made) once, on the first message to a service
            deployment.append(deployment_id(warehouse))
        return message_key(deployment[0], key)

    with warehouse.exclusive(LOCK):
        ledger = DeliveryLedger(warehouse, keys, today)
        for key, row in zip(keys, queue.to_dict("records"), strict=True):
            if key in ledger.rows:
                result.already_delivered += ledger.rows[key]["status"] not in (DUE, SENDING, FAILED)
                continue
            channel = str(row["channel"])
            ledger.add(
                {
                    "delivery_key": key,
                    "user_id": row["user_id"],
                    "next_action": row["next_action"],
                    "escalation_step": int(row["escalation_step"]),
                    "experiment": row["experiment"],
                    "channel": channel,
                    "owner": text_or_none(row["owner"]),
                    "recipient": settings.owner_channels.get(
                        str(row["owner"]), config.report.slack_channel
                    )
                    if channel == "human"
                    else None,
                    "intervention_type": text_or_none(row["intervention_type"]),
                    "priority": float(row["priority"])
                    if row["priority"] == row["priority"]
                    else None,
                    "reason": text_or_none(row["reason"]),
                    "message": text_or_none(row["message"]),
                    "queued_on": pd.Timestamp(row["queued_on"]).date(),
                }
            )
        waiting = sorted(
            {
                str(r["user_id"])
                for r in ledger.rows.values()
                if r["status"] in (DUE, FAILED, SENDING)
            }
        )
        gone = moved_on(warehouse, waiting, config)
        open_rows = _expire(
            ledger, result, settings.max_delay_days, now, gone, settings.max_attempts
        )
        ready = _ready(warehouse, ledger, open_rows, config, now, suppression_file, result)
        ledger.save()

        people = _people(warehouse, [str(ledger.rows[k]["user_id"]) for k in ready["email"]])
        texts: dict[str, str] = {}
        if ready["human"]:
            human_users = [str(ledger.rows[k]["user_id"]) for k in ready["human"]]
            names = _people(warehouse, human_users)
            milestones, events = _timelines(warehouse, human_users, settings.timeline_events)
            for key in ready["human"]:
                user = str(ledger.rows[key]["user_id"])
                texts[key] = human_channel.handoff_text(
                    ledger.rows[key],
                    {k: v for k, v in names.get(user, {}).items() if k != "email"},
                    milestones.get(user, []),
                    events.get(user, []),
                )
        payloads: list[dict[str, Any]] = []
        senders: dict[str, Callable[[], None]] = {
            "in_app": lambda: payloads.extend(
                in_app_channel.deliver_in_app(
                    ledger, ready["in_app"], outreach, key_of, outbox, today
                )
            ),
            "email": lambda: email_channel.deliver_email(
                ledger, ready["email"], people, email, outreach, settings, key_of, outbox, today
            ),
            "human": lambda: human_channel.deliver_human(
                ledger, ready["human"], texts, slack.client(), key_of, outbox, today
            ),
        }
        for channel, send in senders.items():
            try:
                send()
            except Exception as error:  # building a message failed: keep the others going
                result.errors[channel] = f"{type(error).__name__}: {error}"[:500]
                log(f"{channel} delivery stopped: {result.errors[channel]}")
                ledger.save()
        for channel in CHANNELS:
            for key in ready[channel]:
                result.outcomes[(channel, str(ledger.rows[key]["status"]))] += 1
        if payloads or ready["in_app"]:
            result.export = in_app_channel.write_export(export_root, today, payloads)
        ledger.save()
        result.rows = ledger.frame()
    return result


def _expire(
    ledger: DeliveryLedger,
    result: DeliveryRun,
    max_delay_days: float,
    now: datetime,
    gone: dict[str, str] | None = None,
    max_attempts: int = 3,
) -> list[str]:
    """The open rows still worth delivering, best first. Too old, superseded by a newer queue
    entry of the same user, or for a user who has activated or left (`gone`) since: `expired`
    (a nudge days late may push a step already done). A `sending` row is settled by its
    channel (checked or resent under the same key), unless it is older than `max_delay_days`
    or has used `max_attempts`: then it expires, never resent again (it may have left)."""
    gone = gone or {}
    oldest = (now - timedelta(days=max_delay_days)).date()
    open_keys = [k for k, r in ledger.rows.items() if r["status"] in (DUE, SENDING, FAILED)]
    newest: dict[str, Any] = {}
    for key in open_keys:
        row = ledger.rows[key]
        day = row["queued_on"]
        newest[row["user_id"]] = max(newest.get(row["user_id"], day), day)
    kept = []
    for key in open_keys:
        row = ledger.rows[key]
        # A `sending` row is resent (same key) until confirmed, but not past the delivery
        # window counted from its queue day (a resend must not restart it) nor past the
        # attempts allowed: a receiver that keeps timing out while showing the nudge would
        # otherwise show it every day.
        unconfirmed = row["status"] == SENDING and (
            row["queued_on"] < oldest or int(row.get("attempts") or 0) >= max_attempts
        )
        if unconfirmed:
            note = (
                f"could not be confirmed within {max_delay_days:g} days or "
                f"{max_attempts} attempts; not resent"
            )
            ledger.update(key, status=EXPIRED, note=note)
            result.expired += 1
        elif str(row["user_id"]) in gone:
            ledger.update(key, status=EXPIRED, note=gone[str(row["user_id"])])
            result.expired += 1
        elif row["status"] == SENDING:
            kept.append(key)  # may be out already: settled (checked or resent), never dropped
        elif row["queued_on"] < oldest:
            ledger.update(key, status=EXPIRED, note=f"not delivered within {max_delay_days:g} days")
            result.expired += 1
        elif row["queued_on"] < newest[row["user_id"]]:
            ledger.update(key, status=EXPIRED, note="superseded by a newer queue entry")
            result.expired += 1
        else:
            kept.append(key)

    def order(key: str) -> tuple[float, Any, str]:
        row = ledger.rows[key]
        return (-(row.get("priority") or 0.0), row["queued_on"], str(row["user_id"]))

    return sorted(kept, key=order)


def _ready(
    warehouse: WarehouseResource,
    ledger: DeliveryLedger,
    open_keys: list[str],
    config: ProductConfig,
    now: datetime,
    suppression_file: Path | None,
    result: DeliveryRun,
) -> dict[str, list[str]]:
    """Per channel, the rows to send now; the others get their status (suppressed) or a note
    saying why they wait (quiet hours, daily limit, attempts used up)."""
    settings = config.interventions.delivery
    today = now.date()
    ready: dict[str, list[str]] = {channel: [] for channel in CHANNELS}
    users = sorted({str(ledger.rows[k]["user_id"]) for k in open_keys})
    people = _people(warehouse, users) if users else {}
    email_users = sorted(
        {str(ledger.rows[k]["user_id"]) for k in open_keys if ledger.rows[k]["channel"] == "email"}
    )
    addresses, user_ids = read_suppression_file(suppression_file)
    suppression = Suppression(
        addresses, user_ids, _unsubscribed(warehouse, email_users, settings.unsubscribe_events)
    )
    remaining = {
        channel: settings.daily_limits.get(channel, 10**9) - ledger.used_today(channel, today)  # type: ignore[call-overload]
        for channel in CHANNELS
    }
    quiet = settings.quiet_hours
    for key in open_keys:
        row = ledger.rows[key]
        channel, user = str(row["channel"]), str(row["user_id"])
        person = people.get(user, {})
        if row["status"] == FAILED and int(row["attempts"] or 0) >= settings.max_attempts:
            continue  # given up: the last error stays on the row
        if channel == "email":
            address = person.get("email")
            why = suppression.reason(user, address) or (
                None if address else "no email address in raw_users"
            )
            if why:
                ledger.update(key, status=SUPPRESSED, note=why)
                result.suppressed[channel] += 1
                continue
        if quiet is not None and channel in quiet.channels:
            zone = user_timezone(person.get("attributes"), quiet.default_timezone)
            why = in_quiet_hours(now, zone, quiet)
            if why:
                ledger.update(key, note=why)
                result.quiet_hours[channel] += 1
                continue
        if row["status"] != SENDING or row.get("last_attempt_on") != today:
            # A row left `sending` today is counted already.
            if remaining[channel] <= 0:
                limit = settings.daily_limits.get(channel)  # type: ignore[call-overload]
                ledger.update(key, note=f"daily limit of {limit} {channel} messages reached")
                result.limited[channel] += 1
                continue
            remaining[channel] -= 1
        if row.get("note") is not None:
            ledger.update(key, note=None)  # no longer waiting: an old reason would mislead
        ready[channel].append(key)
    return ready
