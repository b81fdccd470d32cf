"""A readable terminal: third-party import-time warnings and log lines a user cannot act on are kept off it.

Called by the CLI before any heavy import and by every build worker process (mdship.workers). ExecuTorch's C++ log
lines are kept off the terminal by mdship.programs. ``MDSHIP_VERBOSE=1`` (`mdship --verbose`) shows all of it.
"""

from __future__ import annotations

import logging
import os
import warnings


def quiet_toolchain() -> None:
    """torch/torchao/transformers print import-time warnings a user cannot act on; keep the terminal readable."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("MDSHIP_VERBOSE", "") not in ("", "0"):
        return
    for name in ("torchao", "torch.utils._pytree", "torch._export", "torch.export", "transformers",
                 "executorch", "coremltools", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
