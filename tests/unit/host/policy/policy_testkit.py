"""Helpers shared by the policy tests: build inputs, load text, evaluate."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from ebb.host.policy import (
    Entity,
    Evaluation,
    PolicyInput,
    PolicyRunner,
    Program,
    load_policy_texts,
)

GiB = 1024 * 1024  # in KiB


def host(**fields: Any) -> Entity:
    return Entity({"name": "host"}, [dict(fields)])


def guest(
    name: str, samples: Optional[Sequence[Mapping[str, Any]]] = None, **fields: Any
) -> Entity:
    if samples is None:
        samples = [dict(fields)]
    return Entity({"name": name, "uuid": f"uuid-{name}"}, list(samples))


def program(text: str, path: str = "test.policy") -> Program:
    return load_policy_texts([(path, text)])


def evaluate(
    text: str,
    host_entity: Optional[Entity] = None,
    guests: Sequence[Entity] = (),
) -> Evaluation:
    runner = PolicyRunner(program(text))
    return runner.evaluate(PolicyInput(host_entity or host(), list(guests)))


def results(
    text: str, host_entity: Optional[Entity] = None, guests: Sequence[Entity] = ()
) -> List[Any]:
    return evaluate(text, host_entity, guests).results


def last(text: str, host_entity: Optional[Entity] = None, guests: Sequence[Entity] = ()) -> Any:
    return results(text, host_entity, guests)[-1]


def targets(ev: Evaluation) -> Dict[str, Optional[int]]:
    return ev.proposed_targets()
