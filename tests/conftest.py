"""Shared test setup. Importing testbed first loads the fast BLAS before mlx.core."""
import testbed  # noqa: F401  (must precede any mlx import)
