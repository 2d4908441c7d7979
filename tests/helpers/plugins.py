"""Third-party-style plugins for the tests: written to disk as installed distributions."""

from __future__ import annotations

import textwrap
from pathlib import Path

#: A transport plugin as a third party would write it: the ``rdv:NAME`` scheme
#: meets at the unix socket NAME in ``$QIOCHAN_RDV_DIR`` (and ``open`` uses the
#: file NAME.dat there).  Its Backend has no ``parse``: qiochan hands it a
#: SchemeAddress.  ``SEEN`` records every address it was given.
RENDEZVOUS_PLUGIN = '''
"""``rdv:NAME``: peers meet at a unix socket named NAME in $QIOCHAN_RDV_DIR."""

import os

import qiochan
from qiochan.address import FileAddress, UnixAddress
from qiochan.plugin import Backend, hookimpl

SEEN = []


def _path(address, suffix=""):
    SEEN.append(address)
    return os.path.join(os.environ["QIOCHAN_RDV_DIR"], address.rest + suffix)


class RendezvousListener:
    def __init__(self, address, inner):
        self.address = address
        self.inner = inner

    def accept(self):
        return self.inner.accept()

    def close(self):
        self.inner.close()


def connect(address, *, timeout=None):
    return qiochan.connect(UnixAddress(_path(address)), timeout=timeout)


def listen(address):
    return RendezvousListener(address, qiochan.listen(UnixAddress(_path(address))))


def open_rdv(address, mode):
    return qiochan.open_channel(FileAddress(_path(address, ".dat")), mode)


@hookimpl
def qiochan_backends():
    return [
        Backend(
            name="rendezvous",
            schemes=("rdv",),
            connect=connect,
            listen=listen,
            open=open_rdv,
            description="peers meet at a named unix socket",
        )
    ]
'''


def make_distribution(root: Path, name: str, module_source: str) -> None:
    """Write an installed-looking distribution with a ``qiochan.plugins`` entry point.

    Put ``root`` on ``sys.path`` (or ``PYTHONPATH``) to install it.
    """
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[qiochan.plugins]\n{name} = {name}\n")
