"""mdship: MobileDiffusion -> ExecuTorch bundles."""
__version__ = "0.1.0"
