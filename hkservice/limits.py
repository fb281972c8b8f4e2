"""Operating-system limits the service raises for itself at start."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("hkservice")


def raise_open_files() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force.

    Each client connection holds a descriptor: a burst of job-end hooks under the common
    soft limit of 1,024 would otherwise run the service out of them.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, exc)
    return soft
