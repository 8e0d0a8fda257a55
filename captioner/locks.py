"""One writer at a time: an OS lock on a small file beside what a process writes (a run
directory's `.captioner.lock`, a captions file's `.NAME.lock`).

The lock is fcntl.flock's, which the kernel releases when its process ends, however it ends
(kill -9 and crashes included): a lock left by a dead process is free by construction, and the
next process takes it over. The file records the holder's pid, host and start time so that a
refusal can name it; it is removed when the holder lets go, and a file left by a dead process
is simply taken over.

Limits: flock works between the processes of one machine. On NFS, Linux maps it to NFS locks,
which keep machines apart only where the mount has working locks (NFSv4, or NFSv3 with lockd;
not with `nolock` or `local_lock=flock`, where each machine sees only its own). A filesystem
without locks (ENOLCK, EOPNOTSUPP) leaves writers unchecked, as before: nothing is refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from captioner.errors import LockedError
from captioner.files import disk_full

_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


class WriterLock:
    """The lock on `lock_file`, for writing `what` (named in the refusal, with `advice`).

    with WriterLock(run_dir / ".captioner.lock", run_dir, "wait for it to end"):
        ...  # only this process writes run_dir
    """

    def __init__(self, lock_file: str | Path, what: str | Path, advice: str):
        self.lock_file, self.what, self.advice = Path(lock_file), what, advice
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        """Takes the lock, or raises LockedError naming the live process that holds it."""
        for _ in range(100):  # a new file each time its holder removed the one opened
            fd = _open(self.lock_file)
            if fd is None:
                return self  # no lock file can be made here (a read-only folder): unchecked
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise LockedError(f"{self.what}: {holder} is writing it: {self.advice}") from None
            except OSError as error:
                if error.errno not in _NO_LOCKS:
                    os.close(fd)
                    raise
            if _still_there(fd, self.lock_file):
                self._fd = fd
                _record(fd)
                return self
            os.close(fd)  # its holder removed it between our open and our lock: open anew
        raise LockedError(f"{self.what}: its lock file keeps changing: {self.advice}")

    def release(self) -> None:
        """Removes the lock file, then lets the lock go (in that order: nobody can take a lock
        on a file about to be removed)."""
        if self._fd is None:
            return
        if _still_there(self._fd, self.lock_file):
            self.lock_file.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _open(path: Path) -> int | None:
    """The lock file, opened (created if need be); None where no file can be made."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as error:
        full = disk_full(error, path)
        if full is not None:
            raise full from error
        return None


def _still_there(fd: int, path: Path) -> bool:
    """Whether `path` is still the file `fd` has open (not removed or replaced meanwhile)."""
    try:
        here, opened = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (opened.st_dev, opened.st_ino)


def _record(fd: int) -> None:
    """Writes who holds the lock into its file; best effort (on a full disk it stays empty)."""
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
    except OSError:
        pass


def _holder(fd: int) -> str:
    """The holder as its lock file names it; it may not have written it yet: wait a little."""
    for _ in range(20):
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
            return f"process {holder['pid']} on {holder['host']} (since {holder['since']})"
        except (ValueError, KeyError, TypeError, OSError):
            time.sleep(0.05)
    return "another process"
