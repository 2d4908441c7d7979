"""QEMUFile rate limiting and RAM-control hooks (QEMU 2019 semantics)."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from qiochan import QEMUFile
from qiochan.qemufile import (
    RAM_CONTROL_FINISH,
    RAM_CONTROL_HOOK,
    RAM_CONTROL_ROUND,
    RAM_CONTROL_SETUP,
    RAM_SAVE_CONTROL_DELAYED,
    RAM_SAVE_CONTROL_NOT_SUPP,
)
from tests.helpers.qemufile import ScriptedChannel

pytestmark = pytest.mark.usefixtures("qemufile_core")


def output() -> QEMUFile:
    return QEMUFile.new_output(ScriptedChannel())


def test_rate_limit_counts_queued_bytes_since_reset() -> None:
    f = output()
    assert f.get_rate_limit() == 0
    f.put_buffer(bytes(5000))
    assert not f.rate_limit()  # no limit set
    f.set_rate_limit(1000)
    assert f.get_rate_limit() == 1000
    assert f.rate_limit()
    f.reset_rate_limit()
    assert not f.rate_limit()
    f.put_buffer_async(bytes(600))
    f.fflush()  # flushed bytes still count
    f.put_be32(1)
    assert not f.rate_limit()
    f.put_buffer(bytes(396))
    assert not f.rate_limit()  # exactly at the limit
    f.put_byte(0)
    assert f.rate_limit()
    f.set_rate_limit(0)
    assert not f.rate_limit()


def test_rate_limit_is_true_once_an_error_is_latched() -> None:
    f = output()
    f.set_error(-errno.EPIPE)
    assert f.rate_limit()


def test_rate_limit_type_is_checked() -> None:
    with pytest.raises(TypeError):
        output().set_rate_limit(1.5)  # type: ignore[arg-type]


class Hooks:
    """Records the hook calls and returns what it is told to."""

    def __init__(self, ret: int = 0, sent: int = 0) -> None:
        self.ret = ret
        self.sent = sent
        self.calls: list[tuple[Any, ...]] = []

    def before_ram_iterate(self, f: QEMUFile, flags: int, data: object) -> int:
        self.calls.append(("before", f, flags, data))
        return self.ret

    def after_ram_iterate(self, f: QEMUFile, flags: int, data: object) -> int:
        self.calls.append(("after", f, flags, data))
        return self.ret

    def hook_ram_load(self, f: QEMUFile, flags: int, data: object) -> int:
        self.calls.append(("load", f, flags, data))
        return self.ret

    def save_page(self, f: QEMUFile, block_offset: int, offset: int, size: int) -> tuple[int, int]:
        self.calls.append(("save", f, block_offset, offset, size))
        return self.ret, self.sent


def test_hooks_are_called_with_the_file_and_flags() -> None:
    f = output()
    hooks = Hooks()
    f.set_hooks(hooks)
    f.ram_control_before_iterate(RAM_CONTROL_SETUP)
    f.ram_control_after_iterate(RAM_CONTROL_ROUND)
    f.ram_control_load_hook(RAM_CONTROL_HOOK, "payload")
    assert hooks.calls == [
        ("before", f, RAM_CONTROL_SETUP, None),
        ("after", f, RAM_CONTROL_ROUND, None),
        ("load", f, RAM_CONTROL_HOOK, "payload"),
    ]
    assert f.get_error() == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda f: f.ram_control_before_iterate(RAM_CONTROL_FINISH),
        lambda f: f.ram_control_after_iterate(RAM_CONTROL_FINISH),
        lambda f: f.ram_control_load_hook(RAM_CONTROL_FINISH),
    ],
)
def test_negative_hook_result_is_latched(call: Any) -> None:
    f = output()
    f.set_hooks(Hooks(ret=-errno.ENOMEM))
    call(f)
    assert f.get_error() == -errno.ENOMEM


def test_missing_hooks_do_nothing_except_a_requested_load_hook() -> None:
    f = output()
    f.ram_control_before_iterate(RAM_CONTROL_SETUP)
    f.ram_control_after_iterate(RAM_CONTROL_SETUP)
    f.ram_control_load_hook(RAM_CONTROL_ROUND)
    assert f.ram_control_save_page(0, 0, 4096) == (RAM_SAVE_CONTROL_NOT_SUPP, 0)
    assert f.get_error() == 0
    f.set_hooks(object())  # an object without any hook method
    f.ram_control_load_hook(RAM_CONTROL_HOOK)
    assert f.get_error() == -errno.EINVAL


def test_save_page_counts_sent_bytes_and_rate() -> None:
    f = output()
    f.set_rate_limit(8000)
    hooks = Hooks(ret=0, sent=4096)
    f.set_hooks(hooks)
    assert f.ram_control_save_page(1 << 20, 8192, 4096) == (0, 4096)
    assert hooks.calls == [("save", f, 1 << 20, 8192, 4096)]
    assert f.transferred() == 4096
    assert not f.rate_limit()
    f.ram_control_save_page(1 << 20, 12288, 4096)
    assert f.rate_limit()  # 8192 page bytes > 8000
    assert f.get_error() == 0


def test_save_page_results() -> None:
    f = output()
    f.set_rate_limit(100)
    f.set_hooks(Hooks(ret=RAM_SAVE_CONTROL_NOT_SUPP))
    f.ram_control_save_page(0, 0, 4096)
    assert not f.rate_limit()  # a declined page does not count
    f.set_hooks(Hooks(ret=RAM_SAVE_CONTROL_DELAYED, sent=0))
    f.ram_control_save_page(0, 0, 4096)
    assert f.get_error() == 0
    assert f.transferred() == 0
    f.reset_rate_limit()
    f.set_hooks(Hooks(ret=-errno.EIO, sent=0))
    assert f.ram_control_save_page(0, 0, 4096) == (-errno.EIO, 0)
    assert f.get_error() == -errno.EIO
