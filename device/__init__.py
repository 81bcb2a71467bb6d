"""facegate: on-device face recognition that publishes only match decisions."""

__version__ = "0.1.0"
