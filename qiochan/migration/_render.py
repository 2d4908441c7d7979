"""A :class:`StreamReport` as text for people: sections, RAM per block, totals, the end."""

from __future__ import annotations

from ..cli._common import format_bytes as _size
from ._report import StreamReport

__all__ = ["format_report"]


def format_report(report: StreamReport) -> str:
    """Return the human summary ``qiochan inspect`` prints (several lines, no trailing newline)."""
    if report.kind == "multifd":
        lines = _multifd_lines(report)
    elif report.kind == "return-path":
        lines = _return_path_lines(report)
    else:
        lines = _savevm_lines(report)
    lines.append(_ending(report))
    lines.extend(f"note: {note}" for note in report.notes)
    return "\n".join(lines)


def _savevm_lines(report: StreamReport) -> list[str]:
    if report.magic is None:
        return ["stream: not a QEMU migration stream"]
    lines = [f"stream: QEVM version {report.version}, {_size(report.size)} ({report.size} B)"]
    if report.machine is not None:
        caps = f", capabilities: {', '.join(report.capabilities)}" if report.capabilities else ""
        lines.append(f"machine: {report.machine}{caps}")
    if report.sections:
        lines.append(f"sections ({len(report.sections)}):")
        width = max(len(s.name) for s in report.sections)
        for s in report.sections:
            lines.append(
                f"  {s.id:>4}  {s.name:<{width}}  instance {s.instance:<3} version {s.version:<3}"
                f" {s.records:>3} record(s) {_size(s.size):>10}  [{s.delimited}]"
            )
    ram = report.ram
    if ram.blocks:
        lines.append(f"RAM ({ram.page_size}-byte pages):")
        width = max(len(name) for name in ram.blocks)
        for name, block in ram.blocks.items():
            extra = ""
            if block.compressed_pages or block.xbzrle_pages:
                extra = f", {block.compressed_pages} compressed, {block.xbzrle_pages} xbzrle"
            lines.append(
                f"  {name:<{width}}  {_size(block.size):>10}  {block.normal_pages:>8} normal,"
                f" {block.zero_pages:>8} zero{extra}"
            )
        normal, zero = ram.total("normal_pages"), ram.total("zero_pages")
        total = sum(block.size for block in ram.blocks.values())
        lines.append(
            f"  total  {_size(total)} in {len(ram.blocks)} blocks; {normal} normal pages "
            f"({_size(normal * ram.page_size)}), {zero} zero pages"
        )
    if report.commands:
        lines.append("commands:")
        for c in report.commands:
            value = "" if c.value is None else f" ({c.value})"
            lines.append(f"  at {c.offset}: {c.name}{value}, {c.len} bytes")
    if report.vmdesc is not None:
        d = report.vmdesc
        lines.append(
            f"device description: {d.devices} devices, page size {d.page_size}, {_size(d.size)}"
        )
        lines.extend(f"  mismatch: {m}" for m in d.mismatches)
    return lines


def _multifd_lines(report: StreamReport) -> list[str]:
    m = report.multifd
    if m is None:
        return ["stream: multifd channel"]
    lines = [
        f"stream: multifd channel {m.channel} (version {m.version}), source {m.uuid}, "
        f"{_size(report.size)} ({report.size} B)",
        f"  {m.packets} packets ({m.sync_packets} sync), {m.normal_pages} pages, "
        f"{_size(m.data_bytes)} of page data, compression {m.compression}",
    ]
    lines.extend(f"  {name}: {pages} pages" for name, pages in m.blocks.items())
    return lines


def _return_path_lines(report: StreamReport) -> list[str]:
    lines = [f"stream: return path, {len(report.return_path)} messages, {report.size} B"]
    for m in report.return_path:
        start = "" if m.start is None else f" start {m.start:#x}"
        value = "" if m.value is None else f" {m.value}"
        lines.append(f"  at {m.offset}: {m.name}{start}{value}")
    return lines


def _ending(report: StreamReport) -> str:
    if report.complete:
        return f"complete: ended at offset {report.end_offset} ({report.end_reason})"
    return f"incomplete: {report.error}"
