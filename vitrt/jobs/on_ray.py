"""``vitrt embed SRC -o OUT --ray [ADDRESS]``: the same job on a Ray cluster (``pip install 'vitrt[ray]'``).

Per shard of the same listing (vitrt.jobs.local): Ray Data reads the files (``read_binary_files``), an
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

from .local import BATCH_SIZE, ERRORS, SHARD_SIZE, Manifest, finish, job_identity, list_images, rows_table, write_shard
from ..errors import BackendError, VitrtError


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


def connect(ray, address: str | None, log) -> None:
    """``ray.init()``'s own rule, which Ray users expect: ``address`` None joins the cluster this machine
    belongs to ($RAY_ADDRESS, or one started here with ``ray start``), else starts a local one for this
    job and says so; an ``address`` that cannot be reached is a BackendError that names it."""
    kw = dict(ignore_reinit_error=True, log_to_driver=False, logging_level="ERROR")
    if address is None:
        try:
            ray.init(address="auto", **kw)
            return
        except ConnectionError:
            log("vitrt: no Ray cluster runs on this machine; starting a local one for this job (stopped at its end)")
            ray.init(**kw)
            return
    _check_reachable(address)  # ray.init retries an unreachable address for minutes
    try:
        ray.init(address=address, **kw)
    except Exception as exc:  # ConnectionError, or Ray's own for a malformed or unreachable address
        raise BackendError(f"cannot reach the Ray cluster at {address!r} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); expected a running cluster there "
                           "(`ray start --head` on it), or --ray with no address for this machine's own") from None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) that accepts no TCP connection within ``timeout`` is refused at once."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", a name Ray resolves itself: Ray's own error applies
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BackendError(f"cannot reach the Ray cluster at {address!r} ({exc.strerror or exc} within {timeout:g} s); "
                           "expected a running cluster there (`ray start --head` on it), or --ray with no address "
                           "for this machine's own") from None


def run_ray(engine_path, src, out, *, task: str = "embed", topk: int = 5, logits: bool = False,
            address: str | None = None,
            actors: int | None = None, batch_size: int = BATCH_SIZE, shard_size: int = SHARD_SIZE, workers: int = 0,
            progress=None, log=lambda m: print(m, file=sys.stderr)) -> dict:
    try:
        import ray
    except ImportError:
        raise BackendError("ray is not installed; expected `pip install 'vitrt[ray]'`") from None
    from ..engine import Engine

    with Engine(engine_path) as engine:  # the artifact the fleet rule picks here; the job's identity
        root, files, skipped = list_images(src)
        artifact, labels = os.fspath(engine.path.resolve()), engine.labels
        width = int(engine.metadata.data["model"]["num_features"])
        classes = engine.metadata.num_classes
        identity = job_identity(engine, root, files, task, topk, logits, shard_size)
    connect(ray, address, log)  # before anything is written to OUT
    try:
        out = Path(out)
        manifest = Manifest(out, identity)
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
