"""``vitrt embed SRC -o OUT --ray [ADDRESS]``: the same job on a Ray cluster (``pip install 'vitrt[ray]'``).

Per shard of the same listing (vitrt.batch): Ray Data reads the files (``read_binary_files``), an
actor pool of Engines decodes and preprocesses them inside the actors (vitrt's timm-exact code, never
Ray's own image decoding) and runs them (``map_batches``), and the driver writes the shard with the
same writer, manifest and errors table as the single-machine job: the same layout, columns, types
and rows, resumable the same way. On a GPU cluster, give each actor a GPU (``num_gpus=1``: one Engine
per GPU, ``--actors`` = the GPU count) and a batch size near the plan's optimal batch (8 by default,
export/defaults.py); on CPUs one actor per node with ``num_cpus`` = its cores is the same shape.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from .batch import BATCH_SIZE, ERRORS, SHARD_SIZE, Manifest, finish, job_identity, list_images, rows_table, write_shard
from .errors import BackendError, VitrtError


class EngineActor:
    """One vitrt.Engine per actor; a batch of {path, bytes} rows in, outputs (or the error) per row out."""

    def __init__(self, artifact: str, width: int, classes: int):
        import vitrt

        self.engine = vitrt.Engine(artifact)
        self.width, self.classes = width, classes

    def __call__(self, batch: dict) -> dict:
        paths, blobs = list(batch["path"]), list(batch["bytes"])
        crops, errors = [], []
        for blob in blobs:
            try:
                crops.append(self.engine.preprocess(bytes(blob)))
                errors.append("")
            except VitrtError as exc:
                crops.append(None)
                errors.append(str(exc))
        good = [c for c in crops if c is not None]
        emb = np.zeros((len(paths), self.width), np.float32)
        logits = np.zeros((len(paths), self.classes), np.float32)
        if good:
            out = self.engine.infer(np.stack(good))
            rows = [i for i, c in enumerate(crops) if c is not None]
            emb[rows], logits[rows] = out["embedding"], out["logits"]
        return {"path": np.array(paths, dtype=object), "error": np.array(errors, dtype=object),
                "embedding": emb, "logits": logits}


def run_ray(engine_path, src, out, *, task: str = "embed", topk: int = 5, logits: bool = False, address: str = "auto",
            actors: int | None = None, batch_size: int = BATCH_SIZE, shard_size: int = SHARD_SIZE, workers: int = 0,
            progress=None, log=lambda m: print(m, file=sys.stderr)) -> dict:
    try:
        import ray
    except ImportError:
        raise BackendError("ray is not installed; expected `pip install 'vitrt[ray]'`") from None
    from .engine import Engine

    with Engine(engine_path) as engine:  # the artifact the fleet rule picks here; the job's identity
        root, files, skipped = list_images(src)
        out = Path(out)
        manifest = Manifest(out, job_identity(engine, root, files, task, topk, logits, shard_size))
        artifact, labels = os.fspath(engine.path.resolve()), engine.labels
        width = int(engine.metadata.data["model"]["num_features"])
        classes = engine.metadata.num_classes

    ray.init(address=None if address in (None, "local") else address, ignore_reinit_error=True,
             log_to_driver=False, logging_level="ERROR")
    try:
        import ray.data

        n = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        shards = [files[i:i + shard_size] for i in range(0, len(files), shard_size)] or [[]]
        todo = [i for i in range(len(shards)) if not manifest.done(i)]
        t0 = time.perf_counter()
        for i in todo:
            rows = {}
            if shards[i]:
                # reads take a tenth of a CPU and each actor the rest of one: with every CPU an actor, reads
                # that asked for a whole CPU would wait forever (measured: "3/2 CPU", no progress)
                ds = ray.data.read_binary_files([os.fspath(root / p) for p in shards[i]], include_paths=True,
                                                ignore_missing_paths=True, num_cpus=0.1)
                ds = ds.map_batches(EngineActor, fn_constructor_args=(artifact, width, classes), batch_size=batch_size,
                                    batch_format="numpy", concurrency=n, num_cpus=0.9)
                for row in ds.iter_rows():
                    rows[_rel(row["path"], root)] = row
            paths, errors, emb, lg = [], [], [], []
            for rel in shards[i]:
                row = rows.get(rel)
                if row is None:
                    errors.append([rel, "the file cannot be read (No such file or directory); expected a readable image file"])
                elif row["error"]:
                    errors.append([rel, row["error"]])
                else:
                    paths.append(rel)
                    emb.append(row["embedding"])
                    lg.append(row["logits"])
            outs = {"embedding": np.array(emb, np.float32).reshape(len(paths), width),
                    "logits": np.array(lg, np.float32).reshape(len(paths), classes)}
            write_shard(out, i, rows_table(task, paths, outs, topk, labels, logits))
            manifest.record(i, len(paths), errors)
        summary = finish(out, manifest, skipped, len(shards), len(todo), time.perf_counter() - t0, actors=n)
    finally:
        ray.shutdown()
    log(f"{task} on Ray ({n} actors): {summary['done']} done, {summary['failed']} failed (see {out / ERRORS}), "
        f"{skipped} non-image files skipped")
    return summary


def _rel(path: str, root: Path) -> str:
    """The listing's relative path of a file Ray read (Ray gives the absolute path it was asked for)."""
    path = path if os.path.isabs(path) else "/" + path
    return Path(os.path.relpath(path, os.path.abspath(root))).as_posix()
