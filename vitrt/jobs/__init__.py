"""Jobs over whole image collections: ``vitrt embed`` / ``vitrt predict SRC -o OUT`` and
``vitrt.embed_files`` / ``vitrt.predict_files``, locally (:mod:`vitrt.jobs.local`) or on a Ray cluster
(:mod:`vitrt.jobs.on_ray`). A layer above the runtime core: it uses ``vitrt.Engine``; the core never
imports it."""

from .local import embed_files, predict_files, run

__all__ = ["embed_files", "predict_files", "run"]
