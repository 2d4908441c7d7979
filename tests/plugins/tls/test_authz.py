"""Authorizers and distinguished names in QEMU's order."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from qiochan_tls import Authz, AuthzList, AuthzSimple
from qiochan_tls.dn import format_dn

DN = "C=UK,O=Example,CN=client"


def test_authz_simple() -> None:
    authz = AuthzSimple(DN)
    assert authz.is_allowed(DN)
    assert not authz.is_allowed(DN + "x")
    assert isinstance(authz, Authz)
    with pytest.raises(ValueError, match="non-empty"):
        AuthzSimple("")


def test_authz_list_first_match_wins() -> None:
    authz = AuthzList([("*,CN=admin", "allow"), ("C=UK,*", "deny"), ("*", "allow")], policy="deny")
    assert authz.is_allowed("C=FR,O=Example,CN=admin")
    assert authz.is_allowed("C=UK,O=Example,CN=admin")  # the first rule wins over the second
    assert not authz.is_allowed(DN)
    assert authz.is_allowed("C=FR,O=Example,CN=client")


def test_authz_list_default_policy() -> None:
    assert not AuthzList([("C=FR,*", "allow")]).is_allowed(DN)
    assert AuthzList([("C=FR,*", "deny")], policy="allow").is_allowed(DN)
    assert not AuthzList().is_allowed(DN)


def test_authz_list_globs_are_case_sensitive() -> None:
    assert not AuthzList([("c=uk,*", "allow")]).is_allowed(DN)


@pytest.mark.parametrize(
    ("rules", "policy", "message"),
    [
        ([("*", "maybe")], "deny", "rule 0 policy"),
        (["*"], "deny", "rule 0 must be a"),
        ([(1, "allow")], "deny", "glob must be a string"),
        ([], "perhaps", "policy must be"),
    ],
)
def test_authz_list_errors(rules: list[object], policy: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuthzList(rules, policy)  # type: ignore[arg-type]


def test_dn_orders() -> None:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "UK"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Ltd"),
            x509.NameAttribute(NameOID.COMMON_NAME, "client"),
        ]
    )
    assert format_dn(name) == r"C=UK,O=Example\, Ltd,CN=client"
    assert format_dn(name, rfc4514=True) == r"CN=client,O=Example\, Ltd,C=UK"


def test_dn_multi_valued_rdn_and_email() -> None:
    name = x509.Name(
        [
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "node"),
                ]
            ),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.EMAIL_ADDRESS, "root@example.org")]
            ),
        ]
    )
    dn = format_dn(name)
    assert dn.endswith(",EMAIL=root@example.org")
    assert "+" in dn.split(",")[0]
