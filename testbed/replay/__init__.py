"""Trace replay: the driver loop, clocks and the Parquet recorder."""
