"""Subcommand groups of ``ebbctl``; each module exposes ``register(subparsers)``."""
