"""`onboarding.yaml` checked against the data: every event name the config mentions should
occur in `raw_events`, or it is most likely a typo.

- `aha_events` that never occur are errors (`ConfigDataError`): activation and the model
  would be computed on an event nobody logs. While the data is
  younger than the activation window they are only warnings (in a product's first days
  nobody may have reached the aha moment yet).
- Funnel steps (a step nobody has done yet shows at 0 in the funnel), milestone events
  (`paths`), `terminal_events`, `health.adoption_events`, `invite_events` and the stall events
  (`interventions.stall`) that never occur are warnings: the pipeline runs, but a milestone
  can never be completed or a failure label never fires.
- Defaults the user did not write (e.g. `invite_events.sent: [teammate_invited]`) that never
  occur are notes, not warnings: nothing was misspelt, only a feature has no data.

Every finding names the key, the value and the closest observed event names. With no events
at all (an empty window) nothing is checked: zero rows are a normal state, not a config error.
Pure functions: the caller passes the config and the observed event names (or their counts).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import ibis.expr.types as ir

from onboarding_pipeline.config.product import ConfigError, ProductConfig

Severity = Literal["error", "warning", "note"]
CLOSEST_MATCHES = 3
# difflib's default: below this similarity a name is not offered as "closest".
MATCH_CUTOFF = 0.6


@dataclass(frozen=True)
class UnseenEvent:
    """A configured event name that never occurs in the data."""

    key: str  # where in onboarding.yaml, e.g. "aha_events[0]"
    value: str
    severity: Severity
    closest: tuple[str, ...]  # most similar observed names, best first (may be empty)
    most_common: tuple[str, ...] = ()  # offered when no observed name is similar

    def message(self) -> str:
        text = f"{self.key}: {self.value!r} never occurs in raw_events"
        if self.closest:
            return text + "; closest observed event names: " + ", ".join(map(repr, self.closest))
        if self.most_common:
            return (
                text
                + "; no observed event name is similar (most common: "
                + ", ".join(map(repr, self.most_common))
                + ")"
            )
        return text


class ConfigDataError(ConfigError):
    """Event names in `onboarding.yaml` that the data never contains (aha events, funnel
    steps); the message names each key, value and the closest observed names."""

    def __init__(self, problems: list[UnseenEvent], source: str = "onboarding.yaml") -> None:
        self.problems = problems
        lines = [f"{source}: {problem.message()}" for problem in problems]
        lines.append(
            "Fix the event name(s) in the config (names are case-sensitive) or check that the "
            "events file holds these events."
        )
        super().__init__("\n".join(lines))


def event_name_counts(events: ir.Table) -> ir.Table:
    """`event_name, events`: rows per event name of `raw_events`, run in the warehouse."""
    return events.group_by("event_name").agg(events=events.count())


def configured_events(config: ProductConfig) -> Iterator[tuple[str, str, Severity]]:
    """(key, event name, severity if it never occurs) for every event name in the config."""
    for index, name in enumerate(config.aha_events):
        yield f"aha_events[{index}]", name, "error"
    for index, name in enumerate(config.funnel_steps):
        # A step nobody has done yet is legal (a small export): the funnel shows it at 0.
        yield f"funnel_steps[{index}]", name, "warning"
    for path_name, path in config.paths.items():
        for m_index, milestone in enumerate(path.milestones):
            for kind in ("events", "started_by"):
                for index, name in enumerate(getattr(milestone, kind)):
                    yield (
                        f"paths.{path_name}.milestones[{m_index}].{kind}[{index}]",
                        name,
                        "warning",
                    )
    for index, name in enumerate(config.terminal_events):
        # Nobody may have deleted their account yet: a warning, not an error.
        yield f"terminal_events[{index}]", name, "warning"
    for index, name in enumerate(config.health.adoption_events):
        yield f"health.adoption_events[{index}]", name, "warning"
    invites = config.invite_events
    invites_written = "invite_events" in config.model_fields_set
    for kind in ("sent", "accepted"):
        written = invites_written and kind in invites.model_fields_set
        for index, name in enumerate(getattr(invites, kind)):
            yield f"invite_events.{kind}[{index}]", name, "warning" if written else "note"
    stall = config.interventions.stall
    stall_written = (
        "interventions" in config.model_fields_set
        and "stall" in config.interventions.model_fields_set
    )
    for kind in ("permission_events", "tour_events"):
        written = stall_written and kind in stall.model_fields_set
        for index, name in enumerate(getattr(stall, kind)):
            yield f"interventions.stall.{kind}[{index}]", name, "warning" if written else "note"


def closest_event_names(value: str, observed: Iterable[str], n: int = CLOSEST_MATCHES) -> list[str]:
    """The observed names most similar to `value` (difflib ratio, case-insensitive)."""
    by_lower: dict[str, str] = {}
    for name in observed:
        by_lower.setdefault(name.lower(), name)
    matches = difflib.get_close_matches(value.lower(), list(by_lower), n=n, cutoff=MATCH_CUTOFF)
    return [by_lower[match] for match in matches]


def unseen_config_events(
    config: ProductConfig, observed: Mapping[str, int] | Iterable[str]
) -> list[UnseenEvent]:
    """Every configured event name that never occurs among `observed` (names, or names with
    their row counts), in config order. Empty when nothing was observed at all."""
    counts = dict(observed) if isinstance(observed, Mapping) else dict.fromkeys(observed, 1)
    counts = {name: count for name, count in counts.items() if count}
    if not counts:
        return []
    common = tuple(sorted(counts, key=lambda name: (-counts[name], name))[:CLOSEST_MATCHES])
    found = []
    for key, name, severity in configured_events(config):
        if name in counts:
            continue
        closest = tuple(closest_event_names(name, counts))
        found.append(UnseenEvent(key, name, severity, closest, () if closest else common))
    return found


def config_event_errors(
    config: ProductConfig, observed: Mapping[str, int] | Iterable[str]
) -> list[UnseenEvent]:
    """Aha events that never occur."""
    return [p for p in unseen_config_events(config, observed) if p.severity == "error"]


def config_event_warnings(
    config: ProductConfig,
    observed: Mapping[str, int] | Iterable[str],
    prefixes: tuple[str, ...] = (),
    include_notes: bool = False,
) -> list[UnseenEvent]:
    """Milestone, adoption, invite and stall events that never occur (keys starting with one
    of `prefixes`, if given); defaults the user did not write only with `include_notes`."""
    wanted: set[str] = {"warning", "note"} if include_notes else {"warning"}
    return [
        p
        for p in unseen_config_events(config, observed)
        if p.severity in wanted and (not prefixes or p.key.startswith(prefixes))
    ]


def require_config_events(
    config: ProductConfig,
    observed: Mapping[str, int] | Iterable[str],
    source: str = "onboarding.yaml",
    *,
    data_days: float | None = None,
) -> list[UnseenEvent]:
    """Raise `ConfigDataError` when an aha event never occurs in the data.

    Young data (`data_days`, the days from the first to the latest event, shorter than the
    activation window) may simply not hold the aha moment yet, as in a
    product's first days: there they are returned as warnings (still naming the closest
    observed names), and become errors once the data is as old as the window."""
    errors = config_event_errors(config, observed)
    if data_days is not None and data_days < config.activation_window_days:
        return errors
    if errors:
        raise ConfigDataError(errors, source)
    return []
