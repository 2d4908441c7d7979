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
"""

from __future__ import annotations

from ._checks import (
    ONE_WAY_CHECKS,
    TIMEOUT,
    TWO_WAY_CHECKS,
    CheckSkipped,
    PairFactory,
)

__all__ = [
    "ONE_WAY_CHECKS",
    "TIMEOUT",
    "TWO_WAY_CHECKS",
    "CheckSkipped",
    "PairFactory",
    "check_one_way_channel",
    "check_two_way_channel",
    "run_check",
]


def run_check(name: str, factory: PairFactory, *, two_way: bool = True) -> str | None:
    """Run the check called ``name``.

    Returns:
        None when it passed, or the reason it does not apply to this channel.
    Raises:
        AssertionError: the channel failed the check or raised an unexpected error.
        KeyError: no such check.
    """
    checks = TWO_WAY_CHECKS if two_way else ONE_WAY_CHECKS
    try:
        check = checks[name]
    except KeyError:
        raise KeyError(f"no conformance check {name!r}; known: {', '.join(checks)}") from None
    try:
        check(factory)
    except CheckSkipped as skipped:
        return str(skipped)
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"{name}: the channel raised {type(exc).__name__}: {exc}") from exc
    return None


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
