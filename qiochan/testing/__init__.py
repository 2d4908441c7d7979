"""Conformance checks for QIOChannel backends, for our plugins and third-party ones alike.

Give a factory that returns a fresh connected pair and run the whole kit::

    from qiochan.testing import check_two_way_channel

    def test_my_backend_conforms():
        check_two_way_channel(lambda: make_connected_pair())

A one-way backend (a pipe, a FIFO) gives ``(writer, reader)`` pairs to
:func:`check_one_way_channel`.  Each check is also available by name in
:data:`ONE_WAY_CHECKS` / :data:`TWO_WAY_CHECKS`, and, through the ``pytest11``
plugin shipped with qiochan, as the parametrized ``qiochan_conformance``
fixture: one test item per check::

    def test_conformance(qiochan_conformance):
        qiochan_conformance(make_connected_pair)          # two-way
        # qiochan_conformance(make_pipe, two_way=False)   # one-way

Every check is bounded in time by the kit itself (:func:`run_check`): a
backend that hangs fails the check, it never hangs the run.

A layer author checks a layer over real TCP pairs with :func:`check_layer`,
or builds layered pairs over any masters with :func:`layered_pairs`::

    from qiochan.testing import check_layer, layered_pairs

    def test_my_layer_conforms():
        check_layer(["mylayer:key=5a"])

    def test_my_layer_items(qiochan_conformance):
        qiochan_conformance(layered_pairs(loopback_pair, ["mylayer:key=5a"]))
"""

from __future__ import annotations

import threading
from contextlib import suppress

from ..channel import Feature, QIOChannel, Shutdown
from ..errors import ChannelError
from . import _checks
from ._checks import (
    ONE_WAY_CHECKS,
    TIMEOUT,
    TWO_WAY_CHECKS,
    CheckSkipped,
    PairFactory,
)
from .layers import check_layer, layered_pairs, loopback_pair

__all__ = [
    "CHECK_BUDGET",
    "ONE_WAY_CHECKS",
    "TIMEOUT",
    "TWO_WAY_CHECKS",
    "CheckSkipped",
    "PairFactory",
    "check_layer",
    "check_one_way_channel",
    "check_two_way_channel",
    "layered_pairs",
    "loopback_pair",
    "run_check",
]


#: A check may take this many times :data:`TIMEOUT` in all before it fails as hung.
CHECK_BUDGET = 5


def run_check(name: str, factory: PairFactory, *, two_way: bool = True) -> str | None:
    """Run the check called ``name``, bounded in time.

    The check runs in a worker thread: if it has not finished within
    :data:`CHECK_BUDGET` times :data:`TIMEOUT` seconds (a call that hangs,
    such as a read on a backend that ignores ``set_blocking(False)``), the
    channels it opened are shut down and closed and the check fails.  No
    pytest-timeout needed.

    Returns:
        None when it passed, or the reason it does not apply to this channel.
    Raises:
        AssertionError: the channel failed the check, raised an unexpected
            error, or hung.
        KeyError: no such check.
    """
    checks = TWO_WAY_CHECKS if two_way else ONE_WAY_CHECKS
    try:
        check = checks[name]
    except KeyError:
        raise KeyError(f"no conformance check {name!r}; known: {', '.join(checks)}") from None
    opened: list[QIOChannel] = []

    def recording() -> tuple[QIOChannel, QIOChannel]:
        pair = factory()
        if isinstance(pair, tuple):
            opened.extend(channel for channel in pair if isinstance(channel, QIOChannel))
        return pair

    outcome: dict[str, BaseException] = {}

    def body() -> None:
        try:
            check(recording)
        except BaseException as exc:
            outcome["error"] = exc

    budget = _checks.TIMEOUT * CHECK_BUDGET
    worker = threading.Thread(target=body, name=f"qiochan-check {name}", daemon=True)
    worker.start()
    worker.join(budget)
    if worker.is_alive():
        for channel in opened:
            _abandon(channel)
        worker.join(_checks.TIMEOUT)
        raise AssertionError(
            f"{name}: the check did not finish within {budget:.0f} s: a call hung (does "
            "the backend block where it should return ERR_BLOCK, or never signal readiness?)"
        )
    error = outcome.get("error")
    if error is None:
        return None
    if isinstance(error, CheckSkipped):
        return str(error)
    if isinstance(error, AssertionError):
        raise error
    if isinstance(error, Exception):
        raise AssertionError(
            f"{name}: the channel raised {type(error).__name__}: {error}"
        ) from error
    raise error


def _abandon(channel: QIOChannel) -> None:
    """Shut down and close ``channel`` from another thread, to wake a call hung on it."""
    with suppress(ChannelError, OSError):
        if not channel.closed and channel.has_feature(Feature.SHUTDOWN):
            channel.shutdown(Shutdown.BOTH)
    with suppress(ChannelError, OSError):
        channel.close()


def _run_all(factory: PairFactory, two_way: bool) -> dict[str, str | None]:
    checks = TWO_WAY_CHECKS if two_way else ONE_WAY_CHECKS
    results: dict[str, str | None] = {}
    for name in checks:
        try:
            results[name] = run_check(name, factory, two_way=two_way)
        except AssertionError as failure:
            raise AssertionError(f"conformance check {name!r} failed: {failure}") from failure
    return results


def check_one_way_channel(factory: PairFactory) -> dict[str, str | None]:
    """Run every one-way check on ``(writer, reader)`` pairs from ``factory``.

    Returns:
        Check name -> None (passed) or the reason it was skipped.
    Raises:
        AssertionError: naming the first check that failed and why.
    """
    return _run_all(factory, two_way=False)


def check_two_way_channel(factory: PairFactory) -> dict[str, str | None]:
    """Run every check, both directions and full duplex, on ``(a, b)`` pairs.

    Returns:
        Check name -> None (passed) or the reason it was skipped.
    Raises:
        AssertionError: naming the first check that failed and why.
    """
    return _run_all(factory, two_way=True)
