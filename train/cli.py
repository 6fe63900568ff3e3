"""Registers the trainer's subcommands: `golf data build|check`, `golf train`, `golf eval`."""

from __future__ import annotations


def register(sub) -> None:
    from train import data_build, evaluate, loop

    data_build.register(sub)
    loop.register(sub)
    evaluate.register(sub)
