"""Authorization of a TLS peer by its distinguished name (QEMU's ``authz-simple``/``authz-list``).

An authorizer is any object with ``is_allowed(identity) -> bool``; the TLS
server asks it about the client certificate's DN in QEMU's order (see
:func:`qiochan_tls.dn.format_dn`), for example ``C=UK,O=Example,CN=client``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Literal, Protocol, runtime_checkable

__all__ = ["Authz", "AuthzList", "AuthzSimple", "Policy"]

Policy = Literal["allow", "deny"]


@runtime_checkable
class Authz(Protocol):
    """What a TLS server consults after the handshake."""

    def is_allowed(self, identity: str) -> bool:
        """Return True when ``identity`` (the peer's DN) may use the session."""


def _policy(value: str, what: str) -> Policy:
    if value == "allow":
        return "allow"
    if value == "deny":
        return "deny"
    raise ValueError(f"{what} must be 'allow' or 'deny', not {value!r}")


class AuthzSimple:
    """Allow exactly one identity (QEMU's ``authz-simple``).

    Args:
        identity: the DN allowed, compared exactly.
    """

    def __init__(self, identity: str) -> None:
        if not isinstance(identity, str) or not identity:
            raise ValueError(f"identity must be a non-empty string, not {identity!r}")
        self.identity = identity

    def __repr__(self) -> str:
        return f"AuthzSimple({self.identity!r})"

    def is_allowed(self, identity: str) -> bool:
        """Return True when ``identity`` equals the allowed one."""
        return identity == self.identity


class AuthzList:
    """Glob rules over the identity, first match wins (QEMU's ``authz-list`` with glob format).

    Args:
        rules: ``(glob, "allow" | "deny")`` pairs, tried in order; globs use
            :mod:`fnmatch` syntax, matched case-sensitively.
        policy: the answer when no rule matches.
    Raises:
        ValueError: a rule or the policy is malformed.
    """

    def __init__(self, rules: Iterable[tuple[str, str]] = (), policy: str = "deny") -> None:
        checked: list[tuple[str, Policy]] = []
        for index, rule in enumerate(rules):
            try:
                pattern, verdict = rule
            except (TypeError, ValueError):
                raise ValueError(
                    f"rule {index} must be a (glob, policy) pair, not {rule!r}"
                ) from None
            if not isinstance(pattern, str):
                raise ValueError(f"rule {index}: glob must be a string, not {pattern!r}")
            checked.append((pattern, _policy(verdict, f"rule {index} policy")))
        self.rules: tuple[tuple[str, Policy], ...] = tuple(checked)
        self.policy: Policy = _policy(policy, "policy")

    def __repr__(self) -> str:
        return f"AuthzList({list(self.rules)!r}, policy={self.policy!r})"

    def is_allowed(self, identity: str) -> bool:
        """Return the verdict of the first rule whose glob matches, else the default policy."""
        for pattern, verdict in self.rules:
            if fnmatch.fnmatchcase(identity, pattern):
                return verdict == "allow"
        return self.policy == "allow"
