"""The pytest plugin (entry point ``pytest11``): the ``qiochan_conformance`` fixture.

The fixture is parametrized over every conformance check, so one test
function becomes one test item per check::

    def test_conformance(qiochan_conformance):
        qiochan_conformance(make_pair)                  # two-way pairs
        # qiochan_conformance(make_pipe, two_way=False) # (writer, reader) pairs

Checks that only exist for two-way pairs are skipped for one-way factories;
checks that do not apply to the channel are skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from . import ONE_WAY_CHECKS, TWO_WAY_CHECKS, PairFactory, run_check

__all__ = ["qiochan_conformance"]

Runner = Callable[..., None]


@pytest.fixture(params=list(TWO_WAY_CHECKS))
def qiochan_conformance(request: pytest.FixtureRequest) -> Runner:
    """Return ``run(factory, two_way=True)`` running the check this item stands for."""
    name: str = request.param

    def run(factory: PairFactory, *, two_way: bool = True) -> None:
        if not two_way and name not in ONE_WAY_CHECKS:
            pytest.skip(f"{name} needs a two-way pair")
        reason = run_check(name, factory, two_way=two_way)
        if reason is not None:
            pytest.skip(reason)

    return run
