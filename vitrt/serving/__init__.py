"""Serving vitrt artifacts on Triton Inference Server: the model repository (:mod:`.repository`), the
Python-backend model that runs inside Triton (:mod:`.triton_model`), and the server process that
``vitrt serve`` starts (:mod:`.server`). The wire contract is in docs/serving.md."""
