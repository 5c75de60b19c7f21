import subprocess
import sys

import pytest


def test_import_vitrt_is_light():
    """The runtime must not pull in the build stage (DESIGN.md) nor a backend at import time."""
    code = ("import sys, vitrt; heavy = [m for m in ('torch', 'timm', 'onnx', 'torchvision', 'onnxruntime', "
            "'tensorrt', 'modelopt', 'skimage') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import vitrt loaded: {out.stdout.strip()}"


def test_engine_on_onnx_does_not_import_build_stage(small_onnx):
    code = ("import sys, numpy as np, vitrt; e = vitrt.Engine(sys.argv[1]); "
            "e.predict(np.zeros((50, 60, 3), np.uint8)); "
            "print(','.join(m for m in ('torch', 'timm', 'onnx', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(small_onnx)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api():
    import vitrt

    for name in ("Engine", "Prediction", "VitrtError", "ImageError", "InputError", "ArtifactError",
                 "MetadataError", "BackendError", "preprocess"):
        assert hasattr(vitrt, name)
    assert issubclass(vitrt.ImageError, vitrt.VitrtError)
    assert issubclass(vitrt.MetadataError, vitrt.ArtifactError)


def test_imports_point_one_way():
    """Three floors: benchmarks -> export -> vitrt. No module imports a floor above its own."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    floors = {"vitrt": 0, "export": 1, "benchmarks": 2}
    wrong = []
    for package, floor in floors.items():
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if floors.get(top, -1) > floor:
                        wrong.append(f"{path.relative_to(root)} imports {name}")
    assert not wrong, wrong


def test_the_wheel_carries_the_runtime_alone(tmp_path):
    """`pip install 'vitrt[cpu]'` installs the package `vitrt` and nothing else at the top level (no
    generic `export` package); the build stage runs from the repository."""
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path), str(root)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("vitrt-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"vitrt"}, tops
    entry = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt"))
    assert "export" not in zipfile.ZipFile(wheel).read(entry).decode()


def _imports(path, package: str) -> list[str]:
    """Every module ``path`` imports, anywhere in it (functions included), as an absolute name."""
    import ast

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.append(node.module or "")
            else:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                out += [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
    return out


def test_the_runtime_core_never_imports_serving_or_jobs():
    """The layers of vitrt/__init__.py: the core (every module of vitrt/ and vitrt/backends/ but the CLI)
    imports nothing from vitrt.serving or vitrt.jobs, not even inside a function; jobs import no serving;
    `import vitrt` loads neither (their names load on first use), and there is no import cycle."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "vitrt"
    core = [p for p in list(root.glob("*.py")) + list((root / "backends").glob("*.py")) if p.name not in ("cli.py", "__main__.py")]
    wrong = []
    for path in core:
        package = "vitrt.backends" if path.parent.name == "backends" else "vitrt"
        wrong += [f"{path.name} imports {m}" for m in _imports(path, package)
                  if m.startswith(("vitrt.serving", "vitrt.jobs"))]
    for path in (root / "jobs").glob("*.py"):
        wrong += [f"jobs/{path.name} imports {m}" for m in _imports(path, "vitrt.jobs") if m.startswith("vitrt.serving")]
    assert not wrong, wrong
    code = ("import sys, vitrt; print(sorted(m for m in sys.modules if m.startswith(('vitrt.jobs', 'vitrt.serving')))); "
            "vitrt.Client; vitrt.embed_files; print(vitrt.Client.__module__, vitrt.embed_files.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "vitrt.serving.client vitrt.jobs.local", out


@pytest.mark.parametrize("package", ["vitrt", "export", "benchmarks"])
def test_no_two_modules_import_each_other(package):
    """Every import between a package's modules, at the top or inside a function, points one way: a
    shared name has one home (vitrt.engine and vitrt.aio once imported each other, AsyncEngine one way and
    _is_single the other; benchmarks.bench and benchmarks.sweep, the sweep and the timing)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / package
    edges = set()
    for path in root.rglob("*.py"):
        mod = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        here = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                targets = [f"{base}.{node.module}"] if node.module else [f"{base}.{a.name}" for a in node.names]
                edges.update((mod, t) for t in targets if t != mod and t != package)
    both = sorted((a, b) for a, b in edges if (b, a) in edges and a < b)
    assert not both, f"modules that import each other: {both}"
