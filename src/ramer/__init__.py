"""ramer: multi-party, multi-modal, multi-label emotion recognition (RAMer, arXiv 2502.10435)."""

__version__ = "0.1.0"


def load(run_dir, device=None, precision="fp32"):
    """Load a trained run: ``ramer.load(RUN_DIR).predict(data)`` (see ``ramer.api.load``)."""
    from ramer.api import load as _load

    return _load(run_dir, device, precision)
