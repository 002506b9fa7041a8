"""The hostile-input tally, shared by every test file that tries bad input or a refusal: each case
ends as a clean error (exit 2, one ``error:`` line matching what it must name, no traceback) or
is accepted correctly; a traceback, a wrong acceptance or a changed file the command had to keep
is counted and fails its test. `tests/test_zz_tally.py` prints the sum for RELIABILITY.md."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

TALLY = {"tried": 0, "clean": 0, "traceback": 0, "wrongly accepted": 0, "accepted correctly": 0, "data lost": 0}


def digest(*paths: Path) -> dict[str, str]:
    """Checksums of every file under ``paths`` (files or folders), to show nothing changed."""
    out = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        out |= {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    return out


def attempt(argv: list[str], capsys, expect: str, keep: tuple[Path, ...] = (), main=None) -> str:
    """Run ``diffseg`` (or ``main``, such as tune's) in-process and classify it; ``keep``: files
    or folders that must come out unchanged. Returns the error line."""
    from diffseg import cli

    main = main or cli.main
    TALLY["tried"] += 1
    before = digest(*keep)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own clean usage errors
        code = exc.code
    except Exception:
        TALLY["traceback"] += 1
        raise
    err = capsys.readouterr().err
    lost(before, keep)
    if code == 0:
        TALLY["wrongly accepted"] += 1
        pytest.fail(f"accepted: {argv}")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(expect, lines[0]), (expect, lines[0])
    TALLY["clean"] += 1
    return lines[0]


def refused(fn, error: type[Exception], expect: str, keep: tuple[Path, ...] = ()) -> str:
    """The same for an API call: it must raise ``error`` with a message matching ``expect``."""
    TALLY["tried"] += 1
    before = digest(*keep)
    try:
        fn()
    except error as exc:
        lost(before, keep)
        assert re.search(expect, str(exc)), (expect, str(exc))
        TALLY["clean"] += 1
        return str(exc)
    except Exception:
        TALLY["traceback"] += 1
        raise
    TALLY["wrongly accepted"] += 1
    pytest.fail(f"accepted: {fn}")


def accepted(n: int = 1) -> None:
    """Cases checked to be accepted correctly by the caller's own assertions."""
    TALLY["tried"] += n
    TALLY["accepted correctly"] += n


def clean(n: int = 1) -> None:
    """Refusals the caller checked itself (a command run in a process of its own)."""
    TALLY["tried"] += n
    TALLY["clean"] += n


def lost(before: dict[str, str], keep: tuple[Path, ...]) -> None:
    if before != digest(*keep):
        TALLY["data lost"] += 1
        pytest.fail(f"files changed that had to be kept: {[str(k) for k in keep]}")
