"""Keeping the console readable: the import-time lines of libraries that no user can act on.

torchao, when installed (the quantization attacks use it), is imported by transformers' model classes too, so its
first import happens wherever a model class is first imported; `import_torchao_quietly` makes that first import here,
under the filter, at the start of the command.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator

# The loggers of the lines importing torchao prints on a CPU build of torch, none of which a user can act on:
# "Failed to load ... .so" (its CUDA extensions), "Detected no triton", and torch's pytree notice about torchao
# registering Enums as pytree constants.
TORCHAO_IMPORT_LOGGERS = ("torchao", "torchao.kernel.intmm", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_torchao_import() -> Iterator[None]:
    """Drop the records of `TORCHAO_IMPORT_LOGGERS` and their children while the body runs: wrap the import that
    first loads torchao. Once torchao is imported, importing it again prints nothing, so this is needed only around
    the first import (transformers' model classes import torchao too when it is installed)."""

    def keep(record: logging.LogRecord) -> bool:
        return not any(
            record.name == name or record.name.startswith(f"{name}.") for name in TORCHAO_IMPORT_LOGGERS
        )

    # A logger's filter sees only its own records, so the filter goes where the children's records end up too: the
    # named loggers, every handler of the root logger, and the last-resort handler used when none is configured.
    targets = [logging.getLogger(name) for name in TORCHAO_IMPORT_LOGGERS]
    targets += [*logging.getLogger().handlers, logging.lastResort]
    targets = [target for target in targets if target is not None]
    for target in targets:
        target.addFilter(keep)
    try:
        yield
    finally:
        for target in targets:
            target.removeFilter(keep)


def import_torchao_quietly() -> None:
    """Import torchao (when installed) without its import-time lines; later imports of it print nothing."""
    if importlib.util.find_spec("torchao") is None:
        return
    with quiet_torchao_import():
        # torchao.quantization too: it registers more pytree constants on its first import (transformers' torchao
        # integration and the quantization attacks import it)...
        import torchao.quantization  # noqa: F401

        with contextlib.suppress(
            ImportError
        ):  # ... and so does the mx_formats prototype transformers imports
            import torchao.prototype.mx_formats  # noqa: F401
