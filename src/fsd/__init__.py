"""fsd: fully serverless distributed inference of sparse DNNs, partitioned by neurons."""

from __future__ import annotations

__version__ = "0.1.0"
