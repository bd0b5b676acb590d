"""Data Sharing Backbone: agreement-enforced, real-time data sharing between agencies."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
