"""Private files and directories: another account on the host reads nothing the backbone writes.

Every entry point (the `backbone` command, the registry server, each child process the backbone
starts) sets the umask 0o077 before it writes, so chDB's tables, Faust's state, logs and keys are
0600 / 0700 whatever the login shell's umask. And a directory that holds data is checked where it
is opened: one whose mode gives its group or others any access was made by someone else's umask or
by hand, and is refused rather than written into (chDB would read and extend it as it is).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from backbone.errors import NotPrivateError

PRIVATE_UMASK = 0o077  # files 0600, directories 0700
OTHERS = 0o077  # any permission bit of the group or of others


def private_umask() -> int:
    """Make every file and directory this process (and each child it starts) creates its user's
    only; returns the umask it had."""
    return os.umask(PRIVATE_UMASK)


def private_directory(path: Path, what: str = "data directory") -> Path:
    """`path`, created 0700 when missing (its missing parents too); a `NotPrivateError` naming the
    path and the fix when it exists and its group or others may use it, or it is no directory."""
    make_private_dirs(path)
    check_private(path, what)
    return Path(path)


def create_private_file(path: Path, data: bytes) -> bool:
    """Write `data` to `path` as a new file of its owner's only (0600, whatever the umask), unless a
    file is there already: then False, and that file is left as it is (a key is never overwritten).
    The file appears whole (written beside it, then linked in place), so no reader sees it half written."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    return True


def read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    """The bytes of `path`, a secret made once: written first from `make()` (`create_private_file`)
    when there is no such file. Of two processes making it at once, one writes and both read that."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        create_private_file(path, make())
    return path.read_bytes()


def make_private_dirs(path: Path) -> None:
    """Create `path` and its missing parents 0700, whatever the umask; existing ones stay as they are
    (for a file of its own mode 0600 in a directory the operator chose, such as a keyring's)."""
    path = Path(path)
    missing = []
    for parent in (path, *path.parents):
        if parent.exists():
            break
        missing.append(parent)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # another process made it meanwhile
            pass


def check_private(path: Path, what: str = "data directory") -> None:
    """Refuse `path` (a `NotPrivateError` naming it and the fix) when its group or others have any
    permission on it. A missing path passes: there is nothing to read yet."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        raise NotPrivateError(f"{what} {path} is not a directory; point the setting at a directory")
    if mode & OTHERS:
        raise NotPrivateError(
            f"{what} {path} is open to other users of this host (mode {stat.S_IMODE(mode):o}); make it private with "
            f"`chmod -R go-rwx {path}` and start again"
        )
