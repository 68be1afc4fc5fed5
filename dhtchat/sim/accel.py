"""The simulator's hot path compiled with mypyc: the same source, run as C.

Theory of operation
-------------------
A simulated datagram runs the real core (decoding, tokens, rate limits, routing table,
lookup bookkeeping) and the simulator's network and event loop: some hundred small Python
calls per event. mypyc (part of mypy, which compiles mypy itself and black) translates
type-annotated modules into C extension modules with the same behaviour; the core is written
for ``mypy --strict``, so it compiles unchanged. Nothing is re-implemented: the extension
modules are built from the very files real nodes import.

Compiled modules are never put next to the sources (a stale build would shadow an edited
file). They are built once per source version into a cache directory named after a hash of
the compiled files, mypy's version and the interpreter, and are used only by processes that
ask for them (``dhtchat simulate``, through :mod:`dhtchat.sim.launch`, and
``benchmarks/sim_scale.py``) before importing any of them. Results do not depend on it
(``metrics.json`` is byte-identical compiled or not; a test checks this); only wall time does.
Without a C compiler, Python headers or mypy the run stays pure Python and says so.
``DHTCHAT_SIM_COMPILE=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import dhtchat

OPT_OUT = "DHTCHAT_SIM_COMPILE"
CACHE_ENV = "DHTCHAT_CACHE_DIR"

# The modules every simulated datagram runs through (the rest of the core, e.g. the msgspec
# codec, is already C or is off the hot path).
COMPILED_MODULES: tuple[str, ...] = (
    "dhtchat.core.addresses",
    "dhtchat.core.ids",
    "dhtchat.core.ratelimit",
    "dhtchat.core.routing",
    "dhtchat.core.lookup",
    "dhtchat.core.node_state",
    "dhtchat.core.node_queries",
    "dhtchat.core.node",
    "dhtchat.sim.engine",
    "dhtchat.sim.models",
    "dhtchat.sim.network",
)
_PACKAGES = ("dhtchat.core", "dhtchat.sim")
_MYPY_CONFIG = """[mypy]
python_version = {version}
ignore_missing_imports = True
"""

_status = "pure Python"


def status() -> str:
    """How this process runs the hot path: "compiled (mypyc)" or "pure Python (...)"."""
    return _status


def _source_root() -> Path:
    return Path(dhtchat.__file__).resolve().parent.parent


def _module_path(module: str) -> Path:
    return _source_root().joinpath(*module.split(".")).with_suffix(".py")


def source_digest() -> str:
    """Hash of what a build depends on: the compiled sources, mypy and the interpreter."""
    try:
        from mypy.version import __version__ as mypy_version  # noqa: PLC0415
    except ImportError:
        mypy_version = "none"
    digest = hashlib.sha256()
    digest.update(f"{sys.version}|{sysconfig.get_platform()}|{mypy_version}".encode())
    for module in COMPILED_MODULES:
        digest.update(module.encode() + b"\0" + _module_path(module).read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def cache_root() -> Path:
    """Where builds are kept: $DHTCHAT_CACHE_DIR, else $XDG_CACHE_HOME/dhtchat, else
    ~/.cache/dhtchat (each build in ``mypyc/<digest>``)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "dhtchat"


def _toolchain_problem() -> str | None:
    """Why a build cannot run here, or None."""
    try:
        import mypyc  # noqa: F401, PLC0415
    except ImportError:
        return "mypy (mypyc) is not installed"
    include = sysconfig.get_paths().get("include", "")
    if not (Path(include) / "Python.h").exists():
        return "the Python headers (Python.h) are missing"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    return None


def build(destination: Path) -> None:
    """Compile :data:`COMPILED_MODULES` into ``destination`` (made atomically).

    Raises RuntimeError with mypyc's output when the build fails.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".build-") as scratch:
        work = Path(scratch) / "src"
        # the whole package is type-checked, so copy its sources (no compiled leftovers)
        shutil.copytree(_source_root() / "dhtchat", work / "dhtchat",
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
        (work / "mypy.ini").write_text(_MYPY_CONFIG.format(
            version=f"{sys.version_info.major}.{sys.version_info.minor}"))
        files = [str(Path(*m.split(".")).with_suffix(".py")) for m in COMPILED_MODULES]
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from mypyc.__main__ import main; main()",
             *files],
            cwd=work, capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise RuntimeError("mypyc failed:\n" + "\n".join(tail))
        staged = Path(scratch) / "out"
        for module in COMPILED_MODULES:
            parts = module.split(".")
            package_dir = work.joinpath(*parts[:-1])
            built = list(package_dir.glob(parts[-1] + ".*.so")) + \
                list(package_dir.glob(parts[-1] + ".*.pyd"))
            if len(built) != 1:
                raise RuntimeError(f"mypyc built no extension for {module}")
            target = staged.joinpath(*parts[:-1])
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built[0], target / built[0].name)
        for shared in work.glob("*__mypyc*"):  # the runtime shared by the modules
            shutil.copy2(shared, staged / shared.name)
        (staged / "BUILD-OK").write_text(source_digest() + "\n")
        os.replace(staged, destination)


def activate(*, build_if_missing: bool = True) -> str:
    """Make the next imports of :data:`COMPILED_MODULES` load the compiled build.

    Must run before any of them is imported. Builds the cache entry first if needed (once;
    concurrent callers wait on a lock). Returns :func:`status`; never raises.
    """
    global _status
    if os.environ.get(OPT_OUT) == "0":
        _status = f"pure Python ({OPT_OUT}=0)"
        return _status
    loaded = [m for m in COMPILED_MODULES if m in sys.modules]
    if loaded:
        _status = f"pure Python ({loaded[0]} was imported first)"
        return _status
    try:
        destination = cache_root() / "mypyc" / source_digest()
        if not (destination / "BUILD-OK").exists():
            problem = _toolchain_problem()
            if problem is not None:
                _status = f"pure Python ({problem})"
                return _status
            if not build_if_missing:
                _status = "pure Python (not built yet)"
                return _status
            destination.parent.mkdir(parents=True, exist_ok=True)
            with open(destination.parent / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (destination / "BUILD-OK").exists():
                    print("compiling the simulator's hot path with mypyc (once per source "
                          "version, about 30 s)...", file=sys.stderr, flush=True)
                    build(destination)
    except (OSError, RuntimeError) as exc:
        _status = "pure Python (build failed)"
        print(f"note: running the simulator as pure Python: {exc}", file=sys.stderr)
        return _status
    _use(destination)
    return _status


def _use(destination: Path) -> None:
    global _status
    import importlib  # noqa: PLC0415

    sys.path.insert(0, str(destination))
    for package_name in _PACKAGES:
        package = importlib.import_module(package_name)
        package.__path__.insert(0, str(destination.joinpath(*package_name.split("."))))
    try:
        node = importlib.import_module("dhtchat.core.node")
    except ImportError as exc:  # e.g. a build for another interpreter: undo, run as is
        _undo(destination)
        _status = f"pure Python (compiled build unusable: {exc})"
        return
    if not str(node.__file__).endswith((".so", ".pyd")):
        _status = "pure Python (compiled build not picked up)"
        return
    _status = "compiled (mypyc)"


def _undo(destination: Path) -> None:
    import importlib  # noqa: PLC0415

    with contextlib.suppress(ValueError):
        sys.path.remove(str(destination))
    for package_name in _PACKAGES:
        package = importlib.import_module(package_name)
        with contextlib.suppress(ValueError):
            package.__path__.remove(str(destination.joinpath(*package_name.split("."))))
    for module in COMPILED_MODULES:
        sys.modules.pop(module, None)
