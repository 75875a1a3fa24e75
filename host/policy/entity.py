"""Policy inputs: the host and the guests as a policy sees them.

The daemon (or a trace replay, or ``ebbctl policy eval``) builds one
:class:`Entity` per host and guest each tick from plain data: properties
(``name``, ``uuid``, ...) and a short history of samples, oldest first. The
policy reads the newest sample with ``x.field`` and the mean of the history
with ``(x.StatAvg "field")``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

Number = Union[int, float]
SampleValue = Optional[Number]


class Entity:
    """One host or guest: properties plus samples (newest last).

    ``props`` holds identity and settings (for a guest at least ``name`` and
    ``uuid``). ``samples`` holds measurements keyed by the names in
    :mod:`ebb.host.policy.fields`; a missing key or ``None`` reads as ``nil``.
    The entity is read-only for the policy; controls and variables live in the
    evaluation, not here.
    """

    __slots__ = ("_avg_cache", "latest", "props", "samples")

    def __init__(
        self,
        props: Mapping[str, Any],
        samples: Sequence[Mapping[str, SampleValue]] = (),
    ) -> None:
        self.props: Mapping[str, Any] = props
        self.samples: Sequence[Mapping[str, SampleValue]] = samples
        self.latest: Mapping[str, SampleValue] = samples[-1] if samples else {}
        self._avg_cache: Dict[str, Optional[float]] = {}

    @property
    def name(self) -> str:
        """The entity's ``name`` property (empty when absent)."""
        return str(self.props.get("name", ""))

    def stat(self, field_name: str) -> SampleValue:
        """Newest value of a field, ``None`` when missing."""
        return self.latest.get(field_name)

    def stat_avg(self, field_name: str) -> Optional[float]:
        """Mean of a field over the kept samples that have it; ``None`` if none do."""
        cache = self._avg_cache
        if field_name in cache:
            return cache[field_name]
        try:  # samples are dicts (a Mapping of another kind takes the loop)
            values: List[SampleValue] = list(
                map(dict.get, self.samples, repeat(field_name))  # type: ignore[arg-type]
            )
        except TypeError:
            values = [sample.get(field_name) for sample in self.samples]
        if None in values:
            values = [value for value in values if value is not None]
        result = sum(values) / len(values) if values else None  # type: ignore[arg-type]
        self._avg_cache[field_name] = result
        return result

    def __repr__(self) -> str:
        return f"Entity(name={self.name!r}, samples={len(self.samples)})"


@dataclass(frozen=True)
class PolicyInput:
    """Everything one evaluation sees: the host and the guests, in a stable order."""

    host: Entity
    guests: Sequence[Entity] = field(default_factory=tuple)

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> PolicyInput:
        """Build from the STATE.json shape used by ``ebbctl policy eval`` and traces.

        ``{"host": {"props": {...}, "samples": [...]},
        "guests": [{"props": {"name": ..., "uuid": ...}, "samples": [...]}]}``;
        raises ``ValueError`` naming the offending part when the shape is wrong.
        """
        if not isinstance(data, Mapping):
            raise ValueError("state must be a JSON object with 'host' and 'guests'")
        host = _entity_from_json(data.get("host", {}), "host")
        raw_guests = data.get("guests", [])
        if not isinstance(raw_guests, list):
            raise ValueError("state 'guests' must be a list")
        guests = [_entity_from_json(g, f"guests[{i}]") for i, g in enumerate(raw_guests)]
        seen = set()
        for i, guest in enumerate(guests):
            if not guest.name:
                raise ValueError(f"state guests[{i}] has no props.name")
            if guest.name in seen:
                raise ValueError(f"state guests[{i}]: duplicate guest name {guest.name!r}")
            seen.add(guest.name)
        return PolicyInput(host=host, guests=guests)


def _entity_from_json(data: Any, where: str) -> Entity:
    if not isinstance(data, Mapping):
        raise ValueError(f"state {where} must be an object with 'props' and 'samples'")
    props = data.get("props", {})
    samples = data.get("samples", [])
    if not isinstance(props, Mapping):
        raise ValueError(f"state {where}.props must be an object")
    if not isinstance(samples, list):
        raise ValueError(f"state {where}.samples must be a list (oldest first)")
    for j, sample in enumerate(samples):
        if not isinstance(sample, Mapping):
            raise ValueError(f"state {where}.samples[{j}] must be an object")
        for key, value in sample.items():
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (isinstance(value, float) and not math.isfinite(value))
            ):
                raise ValueError(
                    f"state {where}.samples[{j}].{key} must be a finite number or null"
                )
    return Entity(dict(props), [dict(s) for s in samples])
