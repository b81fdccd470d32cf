"""mdship: MobileDiffusion -> ExecuTorch bundles."""
from mdship import threads as _threads

_threads.apply()  # thread count and OMP_WAIT_POLICY, before torch is imported (mdship.threads)

__version__ = "0.1.0"
