"""The trust boundary of `resume`: Tune's saved state is pickled, and restoring it runs code.

While a study runs, the driver *seals* Tune's state at every save: a copy of each state file
(`tune/*.pkl`, `tune/*.json`) under ``tune_sealed/``, named by its HMAC-SHA256 under this
installation's key, and ``tune_sealed/seal.json`` listing them. `resume` restores only a sealed
state: when the files in ``tune/`` match the seal they are used; when they do not (damaged by a
crash, killed between Tune's save and its seal, or changed by someone else) the sealed copies are
put back and the study resumes from them, a few seconds earlier (the trial function hands Tune
any epochs it lost, see trial.replay). A study folder without a seal this key can verify (made on
another machine, or by hand) is refused unless `resume --trust` says its origin is known.

The key is ``$DIFFSEG_STUDY_KEY`` (a file), else ``~/.config/diffseg/study.key``: 32 random bytes,
made on first use, readable by its owner only.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickletools
import secrets
import time
from pathlib import Path

from ray.tune import Callback

from diffseg import durable
from diffseg.config import ConfigError

SEALED = "tune_sealed"
SEAL = "seal.json"
SUFFIXES = (".pkl", ".json")


def key_file() -> Path:
    return Path(os.environ.get("DIFFSEG_STUDY_KEY") or Path.home() / ".config" / "diffseg" / "study.key")


def key() -> bytes:
    """This installation's sealing key, made on first use. A key that cannot be made or read
    (a read-only HOME, a folder without access) is a one-line error naming it and the way out."""
    path = key_file()
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
            os.replace(path.with_suffix(".tmp"), path)
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"the study key {path} cannot be {'read' if path.exists() else 'made'} "
                          f"({e.strerror}); set DIFFSEG_STUDY_KEY to a file in a writable folder "
                          f"(it is made there, mode 0600)") from None
    if len(data) < 16:
        raise ConfigError(f"study key {path} is too short ({len(data)} bytes); delete it to make a new one")
    return data


def mac(data: bytes, secret: bytes) -> str:
    return hmac.new(secret, data, hashlib.sha256).hexdigest()


def complete(data: bytes) -> bool:
    """Whether a state file is whole: Tune copies its state into ``tune/`` in a background
    thread, so a step can end while a file is half copied. A pickle (Tune names one of them
    ``.json``) must have opcodes, read and never executed, that end in STOP at its last byte;
    anything else must parse as JSON."""
    try:
        if data[:1] == b"\x80":  # a pickle's PROTO opcode
            last = None
            for op, _, pos in pickletools.genops(data):
                last = (op.name, pos)
            return last is not None and last[0] == "STOP" and last[1] == len(data) - 1
        json.loads(data)
        return True
    except Exception:  # any malformed byte sequence: not whole (yet)
        return False


def state_files_in(folder: Path) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith((".", "tmp-"))}


def state_files(study_dir: Path) -> dict[str, Path]:
    return state_files_in(Path(study_dir) / "tune")


def read_seal(study_dir: Path) -> dict | None:
    try:
        return json.loads((Path(study_dir) / SEALED / SEAL).read_text())["files"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def seal(study_dir: Path, staging: Path | None = None, secret: bytes | None = None) -> bool:
    """Seals Tune's state: the whole state files in ``tune/``, and over them those of Tune's
    ``staging`` folder, where Tune writes each save synchronously before a background thread
    copies it into ``tune/`` (so a seal taken there is one consistent save, also while the copy
    is under way). True when something is sealed (now or already)."""
    study_dir, secret = Path(study_dir), secret or key()
    files = {}
    for folder in (study_dir / "tune", staging):
        for name, path in (state_files_in(folder) if folder is not None else {}).items():
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # replaced while read
                continue
            if complete(data):
                files[name] = data
    if not files:
        return False
    macs = {name: mac(data, secret) for name, data in files.items()}
    if read_seal(study_dir) == macs:
        return True
    folder = study_dir / SEALED
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        blob = folder / f"{macs[name]}.bin"
        if not blob.exists():
            durable.write_with(blob, lambda fh, data=data: fh.write(data))
    durable.write_text(folder / SEAL, json.dumps({"time": time.time(), "files": macs}, indent=1))
    for blob in folder.glob("*.bin"):  # copies of earlier states
        if blob.stem not in macs.values():
            blob.unlink(missing_ok=True)
    return True


def restorable(names) -> bool:
    """Whether a set of state files holds Tune's experiment state (the trials), not only the
    tuner.pkl that Tune writes before its first save."""
    return any(n.startswith("experiment_state") for n in names)


def verify(study_dir: Path, trust: bool = False, say=print) -> bool:
    """Before Tune unpickles anything: the state in ``tune/`` is the sealed one, or the sealed
    one is put back; with ``trust`` an unsealed state is accepted and sealed. Returns whether
    there is a trial state to restore (False: the driver died before Tune first saved one)."""
    study_dir, secret = Path(study_dir), key()
    current = {name: mac(path.read_bytes(), secret) for name, path in state_files(study_dir).items()}
    sealed = read_seal(study_dir)
    if sealed is not None and current == sealed:
        return restorable(sealed)
    if trust:
        say(f"--trust: accepting the Tune state in {study_dir / 'tune'} as it is, and sealing it")
        seal(study_dir, None, secret)
        return restorable(current)
    if sealed is None and not restorable(current):
        return False  # nothing of the trials was saved: nothing is unpickled, the study starts anew
    folder = study_dir / SEALED
    good = sealed is not None and all(
        (folder / f"{m}.bin").exists() and mac((folder / f"{m}.bin").read_bytes(), secret) == m
        for m in sealed.values())
    if not good:
        why = ("it has no seal (tune_sealed/seal.json missing)" if sealed is None else
               "its seal does not verify with this installation's key "
               f"({key_file()}): it was made elsewhere, or changed")
        raise ConfigError(
            f"refusing to resume the study at {study_dir}: {why}. Resuming unpickles Tune's state, "
            f"which can run code; `python -m tune resume {study_dir.name} --trust` accepts it if you "
            f"know where this folder came from")
    differing = sorted(n for n in set(current) | set(sealed) if current.get(n) != sealed.get(n))
    for name in differing:
        path = study_dir / "tune" / name
        if name in sealed:
            durable.write_with(path, lambda fh, m=sealed[name]: fh.write((folder / f"{m}.bin").read_bytes()))
        else:
            path.unlink()
    say(f"the Tune state differs from the state this installation sealed last "
        f"({', '.join('tune/' + n for n in differing)}: damaged, written after the last seal by a "
        f"driver that was killed, or changed): resuming from the sealed copy")
    return restorable(sealed)


class Seal(Callback):
    """Seals each save of Tune's state as Tune makes it: Tune asks its callbacks for their state
    right after writing the experiment and searcher state into its staging folder, so
    ``get_state`` sees one whole save (and returns None: this callback has no state of its own)."""

    def __init__(self, study_dir: Path):
        self.study_dir, self.staging = Path(study_dir), None
        self.secret = key()

    def setup(self, **info):
        seal(self.study_dir, None, self.secret)  # tuner.pkl, written before the first save

    def on_step_begin(self, iteration, trials, **info):
        if self.staging is None and trials:  # Tune's staging folder is known through its trials
            self.staging = Path(trials[0].storage.experiment_driver_staging_path)

    def get_state(self):
        if self.staging is not None:
            seal(self.study_dir, self.staging, self.secret)
        return None
