"""Storing and deploying compact models.

* :mod:`gpjax.export.sparse`: :func:`save_sparse` / :func:`load_sparse` (dense or CSR per
  kernel), :func:`storage_report` (bytes on disk four ways), sparse products;
* :mod:`gpjax.export.artifact`: :func:`export_model` / :func:`export_from_state` (a
  ``jax.export`` directory that loads with JAX alone), :func:`load_artifact`.
"""

from gpjax.export.artifact import LOADER, export_from_state, export_model, load_artifact
from gpjax.export.sparse import load_sparse, save_sparse, storage_report

__all__ = ["LOADER", "export_from_state", "export_model", "load_artifact", "load_sparse",
           "save_sparse", "storage_report"]
