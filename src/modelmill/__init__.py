"""modelmill: a product team's whole machine-learning loop in one package.

Stages (``ingest``, ``features``, ``training``, ``registry``, ``serving``,
``monitoring``, ``experiments``, ``rollout``) each expose a small API from
their own package; this module re-exports the foundation.
"""

from __future__ import annotations

from modelmill import errors
from modelmill.config import Settings, load_settings
from modelmill.project import Project, open_project
from modelmill.training import start_run

__version__ = "0.1.0"

__all__ = ["Project", "Settings", "__version__", "errors", "load_settings", "open_project", "start_run"]
