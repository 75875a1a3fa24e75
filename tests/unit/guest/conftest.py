"""Fixtures for the agent's tests (helpers in agent_testkit.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest
from agent_testkit import FAST_CONFIG, ProcTree, RunningAgent
from ebb.guest.agent import AgentConfig
from ebb.guest.transport import Transport
from ebb.guest.yielder import Yielder

StartAgent = Callable[..., RunningAgent]


@pytest.fixture
def proc_tree(tmp_path: Path) -> ProcTree:
    return ProcTree(tmp_path / "proc")


@pytest.fixture
def start_agent() -> Iterator[StartAgent]:
    """``start_agent(transport, proc_tree, config=FAST_CONFIG) -> RunningAgent``."""
    started: List[RunningAgent] = []

    def start(
        transport: Transport, proc_tree: ProcTree, config: AgentConfig = FAST_CONFIG,
        yielder: Optional[Yielder] = None,
    ) -> RunningAgent:
        running = RunningAgent(transport, proc_tree, config, yielder)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()
