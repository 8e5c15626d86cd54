"""vkit: a production deployment kit for vLLM.

The console script ``vkit`` lives in :mod:`vkit.cli`; the work is done by the
``launcher`` and ``gateway`` packages.
"""

__version__ = "0.1.0"
