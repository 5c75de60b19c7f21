"""One publish path for every artifact: write under a temp name, gate it, publish the report, then
the artifact; and one up-to-date rule.

Order on disk: the parity report (and a plan's sidecar) reach their final names before the artifact
does. A kill at any point leaves either the old state, or a report without its artifact (the next
build rebuilds the artifact); never an artifact without the report it was published with. A rerun
treats an artifact as built only when its recipe matches and its report is there.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

from vitrt.artifacts import parity_path
from vitrt.atomic import atomic_path, write_json
from vitrt.errors import BuildError, VitrtError


def _no_hook(event: str, path: Path) -> None:
    pass


#: Called at each step with (event, final path): "written", "checked", "report", "companions",
#: "published"; and "scratch" by the precision pass. The kill test (tests/test_kill.py) sets it to
#: SIGKILL the build at a chosen step. Nothing else uses it.
on_event: Callable[[str, Path], None] = _no_hook


def publish(final: Path, write: Callable[[Path], None], check: Callable[[Path], dict] | None, *,
            allow_failure: bool = False, companions: tuple[Callable[[Path], Path], ...] = (),
            failure_hint: str = "", log: Callable[[str], None] = print) -> dict:
    """``write(tmp)`` makes the artifact (and any ``companions(tmp)`` files beside it); ``check(tmp)``
    returns its parity report. A failed gate leaves ``<final>.parity-failed.json`` and nothing under
    ``final`` (unless ``allow_failure``); a passed one publishes report, companions, artifact."""
    final = Path(final)
    report: dict = {"artifact": final.name, "passed": None, "note": "not verified (--no-verify)"}
    with atomic_path(final) as tmp:
        pending = [(c(tmp), c(final)) for c in companions]
        try:
            write(tmp)
            on_event("written", final)
            if check is not None:
                report = check(tmp)
                on_event("checked", final)
            if report["passed"] is False:
                if not allow_failure:
                    write_json(parity_path(final, failed=True), report)
                    raise BuildError(f"{final.name} failed its parity gate (see the FAIL lines above; report in "
                                     f"{parity_path(final, failed=True).name}); not published. {failure_hint}".strip())
                report["overridden"] = True
                log(f"WARNING: publishing {final.name} although it failed the parity gate (--allow-parity-failure)")
            write_json(parity_path(final), report)
            on_event("report", final)
            with contextlib.suppress(FileNotFoundError):
                parity_path(final, failed=True).unlink()
            for tmp_c, final_c in pending:
                os.replace(tmp_c, final_c)
            if pending:
                on_event("companions", final)
        finally:
            for tmp_c, _ in pending:
                with contextlib.suppress(FileNotFoundError):
                    tmp_c.unlink()
    on_event("published", final)
    return report


def up_to_date(path: Path, recipe: dict, read_recipe: Callable[[Path], dict | None]) -> bool:
    """Built means: the artifact is there, its stored recipe equals ``recipe``, and the parity report
    it was published with is beside it."""
    if not (Path(path).is_file() and parity_path(path).is_file()):
        return False
    try:
        return read_recipe(path) == recipe
    except (VitrtError, KeyError, TypeError, ValueError):
        return False
