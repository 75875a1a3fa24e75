"""The unit-test guard itself: reads of the real /proc and /sys fail, however they are made."""

import os
from pathlib import Path

import pytest


def test_pathlib_read_is_caught():
    with pytest.raises(AssertionError, match="touched the real host"):
        Path("/proc/meminfo").read_text()


def test_listdir_is_caught():
    with pytest.raises(AssertionError, match="touched the real host"):
        os.listdir("/sys/kernel/mm/ksm")
