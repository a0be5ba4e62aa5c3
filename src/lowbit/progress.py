"""Progress bars: tqdm on a terminal, silent elsewhere unless asked for."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, enable: bool | None = None, **kwargs):
    """A tqdm bar. ``enable=None`` shows it only on a terminal (and never when
    LOWBIT_PROGRESS=0); True or False force it."""
    if enable is None and os.environ.get("LOWBIT_PROGRESS") == "0":
        enable = False
    disable = None if enable is None else not enable
    return tqdm(iterable, disable=disable, leave=False, dynamic_ncols=True, **kwargs)
