"""Batch jobs over image collections: ``vitrt embed SRC -o OUT`` / ``vitrt predict SRC -o OUT``.

OUT is a Parquet dataset folder, laid out as Spark and Hive lay theirs, so that pandas, pyarrow and
DuckDB read exactly the rows (they skip names that begin with ``_``):

    OUT/part-00000.parquet ...   rows in SRC's sorted order: path (relative to SRC, '/'-separated) and
                                 embedding fixed_size_list<float32, D>; or topk_index, topk_label,
                                 topk_prob (and logits with --logits)
    OUT/_vitrt.json              the manifest: artifact (path, sha256), options, the file list, and
                                 each finished shard with its error rows
    OUT/_errors.parquet          path, error (the VitrtError message): files that could not be used

Nothing lost, nothing twice: each shard is written under a temp name and renamed into place, then the
manifest (atomically) records it. A rerun of the same command after kill -9 skips the shards the
manifest records, redoes the rest (a shard renamed but not yet recorded is written again, identically)
and ends with the dataset an uninterrupted run writes. A rerun with another artifact, options or file
list refuses to mix into OUT. Decoding and preprocessing run in a thread pool (Pillow releases the
GIL) that prepares the next images while the current batch runs on the engine.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_path, write_json
from ..errors import InputError, VitrtError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MANIFEST, ERRORS, FORMAT = "_vitrt.json", "_errors.parquet", 1
#: Defaults measured with benchmarks/batch.py on a 2-core CPU with the full int8-cpu artifact
#: (docs/benchmarks.md, "Batch jobs"): batch 4 was the fastest end to end (2.5-2.6 img/s against 2.3-2.5
#: at 1, 8 and 16), and 1, 2 or 4 workers did not differ (decoding is 1 % of the CPU time there); 2
#: workers keep a core's worth of decoding ahead. On a GPU use the plan's batch (--batch-size 32) and
#: the workers docs/benchmarks.md computes.
WORKERS = 2
BATCH_SIZE = 4
SHARD_SIZE = 4096


def list_images(src: str | os.PathLike) -> tuple[Path, list[str], int]:
    """(root, sorted relative '/'-paths of image files, number of non-image files skipped). SRC is a
    folder (recursive), a glob, or a text file with one path per line (relative to the file's folder)."""
    text = os.fspath(src)
    path = Path(text)
    if path.is_dir():
        root, files = path, [p for p in path.rglob("*") if p.is_file() or p.is_symlink()]
    elif path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES:
        root = path.parent
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
        files = [Path(ln) if Path(ln).is_absolute() else root / ln for ln in lines if ln and not ln.startswith("#")]
        root = Path(os.path.commonpath([str(f.parent) for f in files])) if files else root
    elif glob.has_magic(text):
        files = [Path(p) for p in glob.glob(text, recursive=True) if not Path(p).is_dir()]
        magic = next(i for i, part in enumerate(Path(text).parts) if glob.has_magic(part))
        root = Path(*Path(text).parts[:magic]) if magic else Path(".")
    else:
        raise InputError(f"SRC {text!r} is not a folder, a glob or a list file; expected one of those")
    images = sorted({f.relative_to(root).as_posix() for f in files if f.suffix.lower() in IMAGE_SUFFIXES})
    skipped = len({f for f in files if f.suffix.lower() not in IMAGE_SUFFIXES})
    return root, images, skipped


def _schema(task: str, width: int, topk: int, classes: int, logits: bool):
    import pyarrow as pa

    fields = [pa.field("path", pa.string())]
    if task == "embed":
        fields.append(pa.field("embedding", pa.list_(pa.float32(), width)))
    else:
        fields += [pa.field("topk_index", pa.list_(pa.int32(), topk)), pa.field("topk_label", pa.list_(pa.string(), topk)),
                   pa.field("topk_prob", pa.list_(pa.float32(), topk))]
        if logits:
            fields.append(pa.field("logits", pa.list_(pa.float32(), classes)))
    return pa.schema(fields)


def rows_table(task: str, paths: list[str], out: dict[str, np.ndarray], topk: int, labels, logits: bool):
    """The shard's rows as a pyarrow table (numpy outputs -> the dataset's columns)."""
    import pyarrow as pa

    from ..engine import softmax

    width = out["embedding"].shape[1] if len(paths) else 0
    schema = _schema(task, width, topk, len(labels), logits)
    if task == "embed":
        flat = pa.array(out["embedding"].astype(np.float32).reshape(-1)) if len(paths) else pa.array([], pa.float32())
        cols = [pa.array(paths, pa.string()), pa.FixedSizeListArray.from_arrays(flat, width)]
        return pa.Table.from_arrays(cols, schema=schema)
    probs = softmax(out["logits"]) if len(paths) else np.zeros((0, len(labels)))
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :topk].astype(np.int32)
    cols = [pa.array(paths, pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(idx.reshape(-1)), topk),
            pa.FixedSizeListArray.from_arrays(pa.array([labels[i] for i in idx.reshape(-1)], pa.string()), topk),
            pa.FixedSizeListArray.from_arrays(pa.array(np.take_along_axis(probs, idx, 1).astype(np.float32).reshape(-1)), topk)]
    if logits:
        cols.append(pa.FixedSizeListArray.from_arrays(pa.array(out["logits"].astype(np.float32).reshape(-1)), len(labels)))
    return pa.Table.from_arrays(cols, schema=schema)


def shard_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


class Manifest:
    """``OUT/_vitrt.json``: what the job is (artifact, options, files) and which shards are done."""

    def __init__(self, out: Path, job: dict):
        self.path, self.out = out / MANIFEST, out
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except ValueError:
                raise VitrtError(f"{self.path} is not readable JSON; expected vitrt's manifest. Remove {out} to start over") from None
            mine = {k: data.get(k) for k in job}
            if mine != job:
                diff = sorted(k for k in job if data.get(k) != job[k])
                raise VitrtError(f"{out} holds the output of another job (different {', '.join(diff)}); expected the same "
                                 f"artifact, options and files to resume. Use another -o, or remove {out} to start over")
            self.data = data
        else:
            out.mkdir(parents=True, exist_ok=True)
            self.data = {**job, "format": FORMAT, "shards": {}, "complete": False}
            self.save()

    def done(self, i: int) -> bool:
        return shard_name(i) in self.data["shards"] and (self.out / shard_name(i)).is_file()

    def record(self, i: int, rows: int, errors: list[tuple[str, str]]) -> None:
        self.data["shards"][shard_name(i)] = {"rows": rows, "errors": errors}
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


def write_shard(out: Path, i: int, table) -> None:
    import pyarrow.parquet as pq

    with atomic_path(out / shard_name(i)) as tmp:
        pq.write_table(table, tmp)


def write_errors(out: Path, manifest: Manifest) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [e for s in sorted(manifest.data["shards"]) for e in manifest.data["shards"][s]["errors"]]
    table = pa.table({"path": pa.array([r[0] for r in rows], pa.string()), "error": pa.array([r[1] for r in rows], pa.string())})
    with atomic_path(out / ERRORS) as tmp:
        pq.write_table(table, tmp)


def job_identity(engine, root: Path, files: list[str], task: str, topk: int, logits: bool, shard_size: int) -> dict:
    from ..metadata import sha256_file

    meta = engine.metadata.data
    sha = (meta.get("plan") or {}).get("sha256") or sha256_file(engine.path)
    listing = hashlib.sha256("\n".join(files).encode()).hexdigest()
    return {"artifact": {"file": engine.path.name, "sha256": sha},
            "options": {"task": task, "topk": topk if task == "predict" else None, "logits": bool(logits),
                        "shard_size": shard_size, "src": os.fspath(root.resolve())},
            "files": {"count": len(files), "sha256": listing}}


def run(engine, src, out, *, task: str = "embed", topk: int = 5, logits: bool = False, workers: int = WORKERS,
        batch_size: int = BATCH_SIZE, shard_size: int = SHARD_SIZE, progress: bool | None = None,
        log: Callable[[str], None] = lambda m: print(m, file=sys.stderr), on_shard=None) -> dict:
    """Run the job; returns the summary (done, skipped, failed, shards, seconds, img/s)."""
    if task not in ("embed", "predict"):
        raise InputError(f"task={task!r}; expected 'embed' or 'predict'")
    for name, v in (("workers", workers), ("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name}={v!r}; expected a positive integer")
    root, files, skipped = list_images(src)
    out = Path(out)
    manifest = Manifest(out, job_identity(engine, root, files, task, topk, logits, shard_size))
    shards = [files[i:i + shard_size] for i in range(0, len(files), shard_size)] or [[]]
    todo = [i for i in range(len(shards)) if not manifest.done(i)]
    if len(todo) < len(shards):
        log(f"resuming: {len(shards) - len(todo)} of {len(shards)} shards already done in {out}")
    bar = _progress(sum(len(shards[i]) for i in todo), progress)
    t0, done_here = time.perf_counter(), 0
    with ThreadPoolExecutor(workers, thread_name_prefix="vitrt-decode") as pool:
        for i in todo:
            event = (lambda what, i=i: on_shard(what, i)) if on_shard is not None else None
            paths, outs, errors = _run_shard(engine, pool, root, shards[i], batch_size, bar, event)
            write_shard(out, i, rows_table(task, paths, outs, topk, engine.labels, logits))
            if on_shard is not None:
                on_shard("renamed", i)
            manifest.record(i, len(paths), errors)
            if on_shard is not None:
                on_shard("recorded", i)
            done_here += len(shards[i])
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    summary = finish(out, manifest, skipped, len(shards), len(todo), seconds,
                     img_s=done_here / seconds if seconds > 0 else None)
    log(f"{task}: {summary['done']} done, {summary['failed']} failed (see {out / ERRORS}), {skipped} non-image "
        f"files skipped, {len(shards)} shards in {out}")
    return summary


def finish(out: Path, manifest: Manifest, skipped: int, shards: int, todo: int, seconds: float, **extra) -> dict:
    """The errors table, the manifest marked complete, and the job's summary (local and Ray alike)."""
    write_errors(out, manifest)
    manifest.data["complete"] = True
    manifest.save()
    done = manifest.data["shards"].values()
    return {"done": sum(s["rows"] for s in done), "failed": sum(len(s["errors"]) for s in done),
            "skipped_non_images": skipped, "shards": shards, "resumed_shards": shards - todo,
            "seconds": seconds, **extra, "out": os.fspath(out)}


def _files(task: str, src, out, engine="artifacts", **kwargs) -> dict:
    from ..engine import Engine

    if isinstance(engine, Engine):
        return run(engine, src, out, task=task, **kwargs)
    with Engine(engine) as e:
        return run(e, src, out, task=task, **kwargs)


def embed_files(src, out, engine="artifacts", **kwargs) -> dict:
    """``vitrt embed SRC -o OUT``: embeddings of every image under ``src`` into the Parquet dataset
    ``out``; ``engine`` is an Engine, an artifact, or an artifacts folder (the best file for this machine)."""
    return _files("embed", src, out, engine, **kwargs)


def predict_files(src, out, engine="artifacts", **kwargs) -> dict:
    """``vitrt predict SRC -o OUT``: top-k classes (``topk``, ``logits``) of every image under ``src``."""
    return _files("predict", src, out, engine, **kwargs)


def _progress(total: int, enabled: bool | None):
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True)


def _run_shard(engine, pool, root: Path, paths: list[str], batch_size: int, bar, event=None) -> tuple[list, dict, list]:
    """Decode ahead in the pool (two batches in flight), run full batches on the engine, in order."""

    def crop(rel: str):
        # the file's bytes, then the same decode as a Ray actor's (vitrt.jobs.on_ray): the same rows and the
        # same error texts on both
        try:
            data = (root / rel).read_bytes()
        except OSError as exc:  # vanished or unreadable between listing and reading
            return VitrtError(f"the file cannot be read ({exc.strerror or exc}); expected a readable image file")
        try:
            return engine.preprocess(data)
        except VitrtError as exc:
            return exc

    window = deque()
    good, crops, errors, parts = [], [], [], []
    it = iter(paths)
    for rel in it:
        window.append((rel, pool.submit(crop, rel)))
        if len(window) >= 2 * batch_size:
            break
    while window:
        rel, fut = window.popleft()
        nxt = next(it, None)
        if nxt is not None:
            window.append((nxt, pool.submit(crop, nxt)))
        got = fut.result()
        if isinstance(got, BaseException):
            errors.append([rel, str(got)])
        else:
            good.append(rel)
            crops.append(got)
        if len(crops) == batch_size or (not window and crops):
            parts.append(engine.infer(np.stack(crops)))
            crops = []
            if event is not None:
                event("batch")
        if bar is not None:
            bar.update(1)
    if not parts:
        return good, {"logits": np.zeros((0, engine.metadata.num_classes), np.float32),
                      "embedding": np.zeros((0, 1), np.float32)}, errors
    return good, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, errors
