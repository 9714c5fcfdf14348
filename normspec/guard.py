"""What every command needs before and around its work: options checked up front, a cache directory
for Hypothesis, memory figures, and signals turned into a clean, partial-results-keeping exit.

- Options are checked before any work (exit 2 with the reason): finite positive seconds, output
  files and directories that can be written, memory sizes.
- Hypothesis keeps its example database and its other caches under normspec's cache directory
  (`$XDG_CACHE_HOME/normspec`, else `~/.cache/normspec`), never in the user's working directory.
- SIGINT and SIGTERM raise `Interrupted` (a KeyboardInterrupt) in the main thread, so `finally`
  blocks run (the validation worker's process group is killed there); the commands then write what
  they have, marked incomplete, and exit 128 + the signal number (130, 143), as shells do.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import tempfile
from pathlib import Path


class Interrupted(KeyboardInterrupt):
    """normspec received SIGINT or SIGTERM; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_of(exc: BaseException) -> int:
    return getattr(exc, "signum", signal.SIGINT)


def exit_status(exc: BaseException) -> int:
    """128 + the signal number: 130 for SIGINT (Ctrl-C), 143 for SIGTERM."""
    return 128 + int(signal_of(exc))


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise `Interrupted` once; a second signal during the cleanup is ignored so
    that the partial results are written (the worker is killed with SIGKILL, so cleanup is quick)."""

    def handler(signum, frame):
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            if signal.getsignal(s) is signal.SIG_IGN:  # e.g. nohup, or SIGINT of a shell's background job
                continue
            signal.signal(s, handler)
        except ValueError:  # not the main thread (e.g. embedded): leave the defaults
            return


def interrupted_message(command: str, exc: BaseException, kept: str = "") -> str:
    name = signal.Signals(signal_of(exc)).name
    return f"normspec {command}: interrupted ({name}){'; ' + kept if kept else ''}"


# ------------------------------------------------------------------ option types (argparse)

def seconds(text: str) -> float:
    """A finite, positive number of seconds (argparse type): nan, inf, 0 and negatives are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a time limit must be a finite number of seconds above 0")
    return value


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def memory_size(text: str) -> int | str | None:
    """Bytes from '4G', '512M', '2.5GiB' or a plain byte count; 'none' for no limit, 'auto' for the
    default (argparse type)."""
    t = text.strip().lower()
    if t in ("none", "off", "unlimited"):
        return None
    if t == "auto":
        return "auto"
    number = t.rstrip("kmgtib")
    unit = t[len(number):]
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size (e.g. 4G, 512M, or none)") from None
    if not math.isfinite(value) or value < 2**28:
        raise argparse.ArgumentTypeError(f"{text!r}: the memory limit must be at least 256M (or none)")
    return int(value)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


# ------------------------------------------------------------------ output paths, checked before any work

class PathError(ValueError):
    """An output path that cannot be written (a usage error, exit status 2)."""


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_file(path: str, option: str) -> None:
    """Raise PathError unless `path` can be created or overwritten as a file (nothing is left behind)."""
    p = Path(path)
    if p.is_dir():
        raise PathError(f"{option} {path}: is a directory, not a file")
    parent = p.parent if str(p.parent) else Path(".")
    base = _nearest_existing(parent)
    if not base.is_dir():
        raise PathError(f"{option} {path}: {base} is not a directory")
    if base != parent:
        if not os.access(base, os.W_OK | os.X_OK):
            raise PathError(f"{option} {path}: cannot create the directory {parent} (no write permission in {base})")
        return  # created when the file is written
    existed = p.exists()
    try:
        with open(p, "ab"):
            pass
    except OSError as exc:
        raise PathError(f"{option} {path}: cannot be written ({exc.strerror or exc})") from None
    if not existed:
        p.unlink(missing_ok=True)


def check_writable_dir(path: str, option: str) -> None:
    """Raise PathError unless `path` is, or can be created as, a directory we can write in."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise PathError(f"{option} {path}: exists and is not a directory")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise PathError(f"{option} {path}: {base} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".normspec-write-test-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PathError(f"{option} {path}: cannot write in {base} ({exc.strerror or exc})") from None


def check_report_outputs(args) -> None:
    """The output options `check` and `validate` share (--json, --junit-xml, --report-dir,
    --hypothesis-db), each checked before any work (PathError: exit 2)."""
    if args.json and args.json != "-":
        check_writable_file(args.json, "--json")
    if args.junit_xml:
        check_writable_file(args.junit_xml, "--junit-xml")
    if args.report_dir:
        check_writable_dir(args.report_dir, "--report-dir")
    if args.hypothesis_db and args.hypothesis_db != "none":
        check_writable_dir(args.hypothesis_db, "--hypothesis-db")


# ------------------------------------------------------------------ cache directory and Hypothesis

def cache_dir() -> Path:
    """normspec's cache: $NORMSPEC_CACHE_DIR, else $XDG_CACHE_HOME/normspec, else ~/.cache/normspec."""
    if os.environ.get("NORMSPEC_CACHE_DIR"):
        return Path(os.environ["NORMSPEC_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "normspec"


def configure_hypothesis(directory: str | None = None, *, database: bool = True) -> Path:
    """Point every Hypothesis storage (example database, constants cache...) at `directory`
    (default: `cache_dir()/hypothesis`), so nothing is written into the working directory.
    With `database`, failing examples are stored there and replayed first on the next run."""
    from hypothesis.configuration import set_hypothesis_home_dir
    from hypothesis.database import DirectoryBasedExampleDatabase

    from normspec.properties.core import set_example_database

    home = Path(directory) if directory else cache_dir() / "hypothesis"
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError:
        home = Path(tempfile.gettempdir()) / f"normspec-hypothesis-{os.getuid()}"
        home.mkdir(parents=True, exist_ok=True)
    set_hypothesis_home_dir(home)
    set_example_database(DirectoryBasedExampleDatabase(str(home / "examples")) if database else None)
    return home


# ------------------------------------------------------------------ memory

def available_memory() -> int | None:
    """Bytes the kernel reports as available (MemAvailable in /proc/meminfo), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


WORKER_MEMORY_CAP = 4 * 2**30  # the default never exceeds this: validation draws small arrays
WORKER_MEMORY_FLOOR = 2**30  # the interpreter with torch and NumPy needs about 0.7 GiB of address space


def default_worker_memory() -> int:
    """Half the available memory, at most 4 GiB, at least 1 GiB."""
    avail = available_memory()
    if avail is None:
        return WORKER_MEMORY_CAP
    return int(max(WORKER_MEMORY_FLOOR, min(WORKER_MEMORY_CAP, avail // 2)))
