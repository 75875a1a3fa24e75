"""The channel fixtures (a hub on a fake clock, socketpair agents) for every channel test."""

from test_channels import clock, connector, hub, needs  # noqa: F401
