"""Fixtures for the agent's tests (helpers in agent_testkit.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, List

import pytest
from agent_testkit import FAST_CONFIG, ProcTree, RunningAgent
from ebb.guest.agent import AgentConfig
from ebb.guest.transport import Transport

StartAgent = Callable[..., RunningAgent]


@pytest.fixture
def proc_tree(tmp_path: Path) -> ProcTree:
    return ProcTree(tmp_path / "proc")


@pytest.fixture
def start_agent() -> Iterator[StartAgent]:
    """``start_agent(transport, proc_tree, config=FAST_CONFIG) -> RunningAgent``."""
    started: List[RunningAgent] = []

    def start(
        transport: Transport, proc_tree: ProcTree, config: AgentConfig = FAST_CONFIG
    ) -> RunningAgent:
        running = RunningAgent(transport, proc_tree, config)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()
