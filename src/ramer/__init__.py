"""ramer: multi-party, multi-modal, multi-label emotion recognition (RAMer, arXiv 2502.10435)."""

__version__ = "0.1.0"
