"""Matrix-multiply kernels behind one seam (see linear.py)."""
from r1mega.kernels.linear import grouped_linear, linear, use_backend, active_backend  # noqa: F401
