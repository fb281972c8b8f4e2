"""The last lines of a command's output, read from the end of the file.

A command may write anything, for instance a gigabyte without a newline: the cost of a
tail must not depend on the size of the file. So at most `count * (LINE_BYTES + 1)`
bytes are read, from the end, in one pass; a line longer than LINE_BYTES is shown as
TRUNCATED followed by its last LINE_BYTES bytes.
"""

from __future__ import annotations

import os
import stat

LINE_BYTES = 4096
TRUNCATED = "…"
# What one reply may read in all (a whole unit's ranks, both streams): past it, the
# ranks after are left out and the reply says so.
REPLY_BYTES = 8 << 20
_BLOCK = 1 << 16


def open_output(name: str, dir_fd: int) -> int | None:
    """Open an output file for reading, never through a symlink and never blocking on a
    FIFO someone put there; None if there is no regular file to read."""
    try:
        fd = os.open(
            name,
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            dir_fd=dir_fd,
        )
    except OSError:
        return None  # not there, or a symlink (ELOOP): nothing to show
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def tail_lines(
    fd: int, count: int, line_bytes: int = LINE_BYTES, budget: int | None = None
) -> list[str]:
    """The last `count` lines of the open regular file `fd`, reading at most `budget`
    bytes (count * (line_bytes + 1) at most in any case)."""
    if count <= 0:
        return []
    end = os.fstat(fd).st_size
    most = count * (line_bytes + 1)
    budget = most if budget is None else max(0, min(budget, most))
    pos = end
    chunks: list[bytes] = []
    newlines = 0
    # One more newline than lines wanted: the line before them must be known to be
    # complete too, or cut off by the budget.
    while pos > 0 and newlines <= count and end - pos < budget:
        step = min(_BLOCK, pos, budget - (end - pos))
        chunk = os.pread(fd, step, pos - step)
        if len(chunk) < step:
            break  # truncated meanwhile: what is already read is the tail there is
        pos -= step
        chunks.append(chunk)
        newlines += chunk.count(b"\n")
    data = b"".join(reversed(chunks))
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()  # the file ends with a newline
    # Stopped by the budget rather than by a newline: the first line is cut.
    first_partial = pos > 0 and len(raw) <= count
    raw = raw[-count:]
    lines: list[str] = []
    for i, line in enumerate(raw):
        line = line.removesuffix(b"\r")
        shortened = len(line) > line_bytes
        if shortened:
            line = line[-line_bytes:]
        text = line.decode("utf-8", errors="replace")
        if shortened or (i == 0 and first_partial):
            text = TRUNCATED + text
        lines.append(text)
    return lines
