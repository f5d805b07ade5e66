"""Run code you do not trust (a student's notebook) so that it cannot reach the rest.

The grader (`diffusion_lib.classroom`) runs every submitted notebook, and every check
of a student's function, through `start`. Where Linux lets an unprivileged process
make namespaces (util-linux's `unshare`, in every Debian), the command runs:

- in its own user, mount, network and PID namespaces: no network (only a loopback
  interface, which the notebook's kernel needs), and no view of the grader's processes;
- with every file system read-only, except a private work folder (seen inside as
  /tmp/work) and fresh, empty /tmp and /dev/shm;
- with the folders named in `hide` (other students' submissions, the answer key, the
  grades) replaced by empty, unreadable ones;
- with limits on memory (address space), on the size of any file it writes, and on
  time: at the limit, or when the grader stops, the whole namespace is killed, every
  process that the command started included (detached or not).

This is what bubblewrap (`bwrap`) or a container would give; it is built here on
`unshare` because that is on every Debian machine, and a container is not. Where the
namespaces are not allowed (some container runtimes forbid them), the command runs as a
plain process group with the same limits on memory, file size and time, and the
descendants it leaves are killed afterwards; it can then read and write what the
grader can, and `Sandbox.isolated` is False so that the grader can say so.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

INSIDE_WORK = "/tmp/work"  # where the private work folder is seen inside
# mount(2) flags
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
_LOCKED = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}


@dataclass(frozen=True)
class Limits:
    seconds: float = 600.0
    memory_bytes: int = 6 * 2**30  # address space of each process
    file_bytes: int = 256 * 2**20  # the largest file it may write


def _unshare_command() -> list[str] | None:
    exe = shutil.which("unshare")
    if exe is None:
        return None
    return [
        exe,
        "--user",
        "--map-root-user",
        "--mount",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
    ]


@functools.lru_cache(maxsize=1)
def why_not_isolated() -> str | None:
    """None if commands can run isolated here, else why not (said once per grading)."""
    base = _unshare_command()
    if base is None:
        return "util-linux's `unshare` is not installed"
    try:
        out = subprocess.run(
            base + ["true"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"`unshare` could not run ({err})"
    if out.returncode != 0:
        return (
            "this machine does not allow unprivileged namespaces "
            f"({out.stderr.strip() or out.returncode})"
        )
    return None


class Sandbox:
    """One command running in a sandbox: `poll()`, `wait()`, `kill()`; the setup's
    report (`isolated`, `problems`) once it has started."""

    def __init__(
        self,
        command,
        work: Path,
        hide=(),
        limits: Limits = Limits(),
        env: dict | None = None,
        isolate: bool = True,
    ):
        self.work = Path(work).resolve()
        self.limits, self.started = limits, time.monotonic()
        self.stdout = open(self.work / ".stdout", "wb")
        self.stderr = open(self.work / ".stderr", "wb")
        env = {**_clean_env(), **(env or {})}
        self.isolated = isolate and why_not_isolated() is None
        self.problems: list[str] = []
        self._descendants: set[int] = set()
        if not self.isolated:
            self._start_plain(command, env)
            return
        read_end, write_end = os.pipe()
        spec = {
            "work": str(self.work),
            "hide": [str(Path(p).resolve()) for p in hide],
            "status_fd": write_end,
            "memory": limits.memory_bytes,
            "file": limits.file_bytes,
            "command": list(command),
        }
        self.proc = subprocess.Popen(
            _unshare_command()
            + [sys.executable, "-I", str(Path(__file__).resolve()), json.dumps(spec)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.stdout,
            stderr=self.stderr,
            start_new_session=True,
            pass_fds=(write_end,),
            preexec_fn=_die_with_parent,
        )
        os.close(write_end)
        # one line, written before the command starts (`unshare` itself keeps the pipe
        # open until the command ends, so do not read to the end)
        with os.fdopen(read_end) as status:
            text = status.readline()
        try:
            report = json.loads(text)
            self.problems = [str(p) for p in report.get("problems", [])]
        except json.JSONDecodeError:
            self.problems = ["the sandbox did not report its set-up"]
        if self.problems:  # the sandbox refused to run the command: run it plainly
            self.proc.wait()
            self.isolated = False
            self._start_plain(command, env)

    def _start_plain(self, command, env) -> None:
        """The fallback: a process group with the same limits, not isolated."""
        self.proc = subprocess.Popen(
            list(command),
            cwd=self.work,
            env={**env, **_private_env(self.work)},
            stdin=subprocess.DEVNULL,
            stdout=self.stdout,
            stderr=self.stderr,
            start_new_session=True,
            preexec_fn=functools.partial(_set_limits, self.limits, die=True),
        )

    def poll(self) -> int | None:
        if not self.isolated:  # remember descendants while they can still be seen
            try:
                kids = psutil.Process(self.proc.pid).children(recursive=True)
                self._descendants.update(p.pid for p in kids)
            except psutil.Error:
                pass
        return self.proc.poll()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait(self, deadline: float | None = None) -> tuple[int | None, bool]:
        """Wait until the command ends or `deadline` seconds from its start (default:
        the limit) have passed; (exit status, whether it was stopped at the limit).
        Everything it started is killed either way."""
        deadline = self.limits.seconds if deadline is None else deadline
        while self.poll() is None and self.elapsed() < deadline:
            time.sleep(0.05)
        timed_out = self.proc.poll() is None
        self.kill()
        return self.proc.returncode, timed_out

    def kill(self) -> None:
        """Kill the command and everything it started."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not self.isolated:
            for pid in self._descendants:  # detached ones left the process group
                try:
                    psutil.Process(pid).kill()
                except psutil.Error:
                    pass
        self.proc.wait()
        self.stdout.close()
        self.stderr.close()

    def output(self, which: str = "stderr", limit: int = 4000) -> str:
        path = self.work / f".{which}"
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - limit))
            return f.read().decode("utf-8", "replace")


def start(
    command, work, hide=(), limits: Limits = Limits(), env=None, isolate=True
) -> Sandbox:
    """Start `command` (a list) in a sandbox whose private, writable work folder is
    `work` (a folder of the grader's, seen inside as INSIDE_WORK when isolated)."""
    return Sandbox(command, work, hide, limits, env, isolate)


def _clean_env() -> dict:
    """The grader's environment without what would let a command reach the grader
    (its Jupyter and IPython folders, its grading log)."""
    drop = (
        "JPY_",
        "JUPYTER_",
        "IPYTHONDIR",
        "DIFFUSION_GRADING",
        "PYTHONSTARTUP",
        "PYTHONPATH",
        "PYTHONHOME",
        "VIRTUAL_ENV_PROMPT",
    )
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def _private_env(work) -> dict:
    home = Path(work) / "home"
    return {
        "HOME": str(home),
        "TMPDIR": str(work),
        "MPLCONFIGDIR": str(home / ".mpl"),
        "JUPYTER_RUNTIME_DIR": str(home / ".jupyter"),
        "IPYTHONDIR": str(home / ".ipython"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local"),
    }


def _die_with_parent() -> None:
    """(in the child, before exec) Be killed if the grader dies: no sandbox outlives
    it (`unshare --kill-child` then kills everything inside)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _set_limits(limits: Limits, die: bool = False) -> None:
    if die:
        _die_with_parent()
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


# ------------------------------------------------------------ inside the namespaces


def _mount(libc, source, target, fstype, flags, data=None) -> str | None:
    code = libc.mount(
        None if source is None else str(source).encode(),
        str(target).encode(),
        None if fstype is None else fstype.encode(),
        flags,
        None if data is None else data.encode(),
    )
    return None if code == 0 else os.strerror(ctypes.get_errno())


def _tmpfs(libc, path, flags: int, options: str) -> str | None:
    """A fresh tmpfs over `path` (no set-uid, no devices); None or why it failed."""
    return _mount(libc, "tmpfs", path, "tmpfs", flags | MS_NOSUID | MS_NODEV, options)


def _mount_points() -> list[tuple[str, int]]:
    """(mount point, its locked flags) for every mount, from /proc/self/mountinfo."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")
        flags = 0
        for option in fields[5].split(","):
            flags |= _LOCKED.get(option, 0)
        points.append((point, flags))
    return points


def _loopback_up() -> None:
    """Bring up `lo` (a new network namespace has it down): the notebook's kernel talks
    to its client over 127.0.0.1."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ifreq = struct.pack("16sH14x", b"lo", 0)
    flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, ifreq))[1]  # SIOCGIFFLAGS
    fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))  # SIOCSIFFLAGS
    s.close()


def _enter(spec: dict) -> None:
    """(as PID 1 of the new namespaces) Make the file systems read-only, hide what must
    not be seen, give the command a private /tmp/work, set the limits, report, run."""
    libc = ctypes.CDLL(None, use_errno=True)
    problems = []
    work_fd = os.open(spec["work"], os.O_RDONLY | os.O_DIRECTORY)
    if err := _mount(libc, None, "/", None, MS_REC | MS_PRIVATE):
        problems.append(f"could not make the mounts private: {err}")
    writable = ["/tmp", "/dev/shm", INSIDE_WORK]
    for path in ("/tmp", "/dev/shm"):  # fresh and empty: nothing of other runs
        if os.path.isdir(path):
            err = _tmpfs(libc, path, 0, f"size={spec['file']},mode=1777")
            if err:
                problems.append(f"could not give a fresh {path}: {err}")
    os.makedirs(INSIDE_WORK, exist_ok=True)
    if err := _mount(libc, f"/proc/self/fd/{work_fd}", INSIDE_WORK, None, MS_BIND):
        problems.append(f"could not mount the work folder: {err}")
    os.close(work_fd)
    for point, locked in _mount_points():  # everything else read-only
        if point in writable or point == "/proc" or point.startswith("/proc/"):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | locked
        err = _mount(libc, None, point, None, flags)
        if err and point in ("/", "/usr", "/home", "/work", "/root"):
            problems.append(f"could not make {point} read-only: {err}")
    for path in spec["hide"]:
        if not os.path.lexists(path):
            continue
        if os.path.isdir(path):
            err = _tmpfs(libc, path, MS_RDONLY, "size=4k,mode=000")
        else:
            err = _mount(libc, "/dev/null", path, None, MS_BIND)
        if err:
            problems.append(f"could not hide {path}: {err}")
    try:
        _loopback_up()
    except OSError as err:
        problems.append(f"could not bring up the loopback interface: {err}")
    probe = Path(__file__).with_name(".sandbox-probe")
    try:  # the library's own folder must be read-only now
        probe.write_text("x")
        probe.unlink()
        problems.append(f"{probe.parent} is still writable")
    except OSError:
        pass
    with os.fdopen(spec["status_fd"], "w") as status:
        status.write(json.dumps({"problems": problems}) + "\n")
    if problems:  # the grader will say it is not isolated; do not run the command
        sys.exit(70)
    os.chdir(INSIDE_WORK)
    os.environ.update(_private_env(INSIDE_WORK))
    os.makedirs(os.environ["HOME"], exist_ok=True)
    _set_limits(Limits(memory_bytes=spec["memory"], file_bytes=spec["file"]))
    command = spec["command"]
    os.execvp(command[0], command)


if __name__ == "__main__":
    _enter(json.loads(sys.argv[1]))
