"""User-facing errors.

Anything a user can cause (a bad recipe, a broken checkpoint, a wrong path) is raised as a
`UserError`. The CLI prints its message as one line and exits with code 2; no traceback.
Messages should name the file, the key or layer, what was expected and what to do.
"""


class UserError(Exception):
    """A usage or input error: printed as one line, exit code 2."""

    exit_code = 2


class CheckpointError(UserError):
    """A checkpoint directory that cannot be loaded (missing files, bad keys, shapes, dtypes, NaN)."""


class RecipeError(UserError):
    """A recipe that does not validate."""


class BundleError(UserError):
    """A bundle directory that is missing, tampered with, or from an incompatible schema."""


class VerificationError(Exception):
    """A build or bundle whose numbers miss a gate. Exit code 1: the input was fine, the result is not."""

    exit_code = 1


class QuantizationError(VerificationError):
    """Quantization did not do what the recipe asked (a planned layer left in float, ops not lowered)."""
