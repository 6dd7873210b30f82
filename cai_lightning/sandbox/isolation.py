"""The kernel's isolation of the program child: what a sandboxed program can reach, enforced by Linux.

:func:`isolate` runs in the program child (``python -I -S -B``, standard library only) before any untrusted
code, and returns only in the process that is to run the program. ``layers`` tells, for each layer below,
``"on: ..."`` or ``"off: why"``; what an "on" layer guarantees:

- **process**: the program dies with the evaluator, even on ``kill -9``. ``PR_SET_PDEATHSIG`` (SIGKILL) is
  armed, then the parent is checked to be ``config["parent_pid"]`` (else exit 1), and both again after
  every change of credentials (which clears the death signal). The kernel sends it when the *thread* that
  started the child exits: the evaluator must wait for the child in the thread that started it.
- **pid**: a new PID namespace. The process that called :func:`isolate` (the "outer") forks the program
  (the "inner"), which is pid 1 there, so the evaluator and every other process have no pid it can name
  (``os.getppid()`` is 0). The outer closes every file descriptor, waits, and ends as the program did
  (same exit code, or killed by the same signal); it never returns to the caller. The program holds no
  file descriptor but stdin, stdout, stderr and ``keep_fds``.
- **network**: a new network namespace: only a loopback device, down. No connection to anything.
- **ipc**: a new IPC namespace: no System V IPC or POSIX message queue of the host.
- **filesystem**: a new root (``pivot_root``; the host's root is detached, not just hidden). In it, read-only:
  the interpreter's standard library and shared library at their own paths, ``/usr``, ``/lib`` ``/lib64``
  ``/bin`` ``/sbin`` as on the host (symlinks or binds), ``/etc/ld.so.cache``, the devices ``null``,
  ``zero``, ``random``, ``urandom``, and an empty ``/proc``. Nothing else of the host exists: not ``/root``,
  ``/home``, the project, nor other work dirs. Writable: the work dir only. Mount flags the kernel locks in
  a user namespace (nosuid, nodev, noexec, atime) are kept. Nothing is mounted unless the mount namespace
  is verifiably new and its mounts private, so no change reaches the host.
- **disk**: the work dir, at its host path, is a fresh tmpfs of ``disk_bytes`` bytes and ``disk_files``
  files and directories (nosuid, nodev, noexec): writing more fails with ENOSPC, and nothing the program
  writes reaches the host's disk; it is freed when the program ends. The host's work dir stays empty.
- **user**: as root, a uid of its own (``uid_base`` + the outer's pid), no groups, no capabilities; skipped
  (and reported) when that uid is not mapped or the standard library would not be readable for it. Not
  root: every capability is dropped inside the user namespace; the uid stays. Then ``no_new_privs``.
- **rlimits**: RLIMIT_AS ``memory_mb``, RLIMIT_CPU ``cpu_s`` (soft) and one second more (hard), RLIMIT_FSIZE
  ``file_bytes``, RLIMIT_NOFILE 64, RLIMIT_NPROC 0 (ignored by the kernel for root), RLIMIT_CORE 0.
- **seccomp**: a syscall filter (libseccomp, last of all) that fails with EPERM what a test program never
  needs: signals and tracing (``kill``, ``tgkill``, ``pidfd_*``, ``ptrace``, ``process_vm_*``), priorities
  and affinity, new processes, threads and programs (``fork``, ``clone``, ``execve``; ``clone3`` fails with
  ENOSYS), sockets, leaving the process group, credentials, mounts and namespaces, ``bpf``, ``keyctl``,
  ``io_uring``, ``userfaultfd``, ``perf_event_open``, modules, ``prctl(PR_SET_PDEATHSIG)``, and the like
  (:data:`REFUSED_SYSCALLS`). A system call of another architecture (32-bit or x32 numbers) kills the
  program. Off, and reported so, when libseccomp is not installed.

Why the program is pid 1 rather than pid 2 under an init of ours: one process and one fork fewer per run,
and pid 1 has nothing to reap (it cannot fork). What differs for pid 1: a signal without a handler sent
from inside its namespace is ignored (the filter lets it send none), and so is the kernel's SIGXCPU at
the soft CPU limit; the hard limit's SIGKILL one second later ends it instead, and the outer reports that
as SIGXCPU (see :func:`ending`), so the evaluator still reads "exceeded the CPU time limit". ``os.abort()``
ends in SIGSEGV: its ``raise(SIGABRT)`` is refused, and glibc then faults on purpose.

A layer that the machine does not offer is reported off and the others still apply: without namespaces
(unshare refused) there is no fork and no new root, the program runs in the calling process, and the
disk is bounded by RLIMIT_FSIZE only. A failure that would leave an offered layer half done raises.

``config`` keys read: ``workdir`` (real absolute host path of an empty directory), ``uid_base``, ``parent_pid``,
``keep_fds`` (the channel's file descriptors: left open in the inner, closed in the outer), and
``limits`` = {``cpu_s``, ``memory_mb``, ``file_bytes``, ``disk_bytes``, ``disk_files``}.

Why one long module: it is the whole of what the kernel enforces on the program, layer by layer in the order
applied, sent to the program child as one file on its stdin (standard library only); a reader checking the
sandbox's promise reads it in one place.
"""

import _signal  # the C module: `signal` would cost 3.5 ms of imports per run (enum)
import ctypes
import errno
import os
import resource
import sys

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
# Per-mount flags that a read-only remount must repeat: in a user namespace the kernel refuses to clear them.
KEPT_MOUNT_FLAGS = {b"nosuid": 2, b"nodev": 4, b"noexec": 8, b"noatime": 1024, b"nodiratime": 2048, b"relatime": 1 << 21}
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
# pivot_root has no glibc wrapper: its number, by machine.
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

ROOT_TMPFS = b"size=1m,nr_inodes=1024,mode=755"  # holds only directories, mount points and symlinks
HOST_LINKS = ("/bin", "/sbin", "/lib", "/lib64")  # symlinks into /usr on a merged-/usr system, else bound
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
LOADER_CACHE = "/etc/ld.so.cache"  # for dlopen of extension modules' libraries (libffi for ctypes, ...)

# libseccomp (seccomp.h).
SCMP_ACT_ALLOW, SCMP_ACT_ERRNO = 0x7FFF0000, 0x00050000  # ERRNO: | the errno
SCMP_CMP_MASKED_EQ = 7
# Refused with EPERM. Names libseccomp does not know on this machine are skipped.
REFUSED_SYSCALLS = (
    # other processes: signals, tracing, their memory, priorities (the PID namespace already hides them)
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal",
    "pidfd_getfd", "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "process_mrelease",
    "kcmp", "setpriority", "ioprio_set", "sched_setaffinity", "sched_setscheduler", "sched_setparam",
    "sched_setattr", "move_pages", "migrate_pages",
    # new processes, threads and programs; leaving the process group the evaluator kills at its timeout
    "fork", "vfork", "clone", "execve", "execveat", "setsid", "setpgid",
    # sockets: the channel is pipes, and the network namespace has nothing to reach anyway
    "socket", "socketpair",
    # credentials
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid", "setgroups",
    "capset",
    # the sandbox's own walls: mounts and namespaces
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr",
    # kernel surface no test program needs
    "bpf", "keyctl", "add_key", "request_key", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl", "quotactl_fd",
    "open_by_handle_at", "name_to_handle_at", "personality", "modify_ldt", "uselib", "fanotify_init",
    "iopl", "ioperm", "sethostname", "setdomainname", "settimeofday", "clock_settime", "vhangup",
)


class ArgCompare(ctypes.Structure):
    """libseccomp's ``struct scmp_arg_cmp``: argument ``arg`` compared with ``op`` to the data."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def isolate(config, layers):
    """Put this process behind every layer the machine offers (see the module docstring), in place.

    Returns only in the process that will run the program, holding no file descriptor but stdin, stdout,
    stderr and ``config["keep_fds"]``; any other process made here never returns. Fills ``layers`` (name →
    ``"on: ..."`` / ``"off: why"``) for process, pid, network, ipc, filesystem, disk, user, rlimits and
    seccomp. Raises OSError (ValueError for a bad ``limits`` or ``workdir``) when a layer the machine offers
    cannot be completed; nothing untrusted has run then.
    """
    limits, workdir = config["limits"], config["workdir"]
    if not (limits["disk_bytes"] > 0 and limits["disk_files"] > 0):  # tmpfs reads 0 as "no limit"
        raise ValueError(f"isolate: disk_bytes and disk_files must be positive, got {limits!r}")
    if workdir == "/" or workdir != os.path.realpath(workdir):  # mounts are found by this path in mountinfo
        raise ValueError(f"isolate: the work dir must be given by its real absolute path, not {workdir!r}")
    libc = load_libc()
    die_with_parent(libc, config["parent_pid"])
    # Read while the host's files are in sight: libseccomp, what the interpreter needs.
    seccomp = load_libseccomp(layers)
    library = interpreter_dirs()
    root = os.geteuid() == 0

    namespaces = enter_namespaces(libc, root, layers)
    die_with_parent(libc, config["parent_pid"])  # a new user namespace is new credentials, which clear it
    uid = config["uid_base"] + os.getpid() if root else None  # checked in the user namespace we are now in
    if uid is not None and not (mapped("/proc/self/uid_map", uid) and mapped("/proc/self/gid_map", uid)):
        layers["user"] = f"off: uid {uid} is not mapped in this user namespace"
        uid = None
    if namespaces:
        outer_alive = fork_program(libc, limits["cpu_s"])  # from here on: the inner, pid 1
        die_with_outer(libc, outer_alive)
        build_root(libc, workdir, library, limits, layers)
    else:
        outer_alive = None
        layers["disk"] = "off: no mount namespace; RLIMIT_FSIZE bounds each file, not their sum"
    os.chdir(workdir)  # the new root's work dir, or the host's

    switch_user(libc, workdir, uid, library, layers)
    if outer_alive is None:  # again: a change of credentials clears the death signal
        die_with_parent(libc, config["parent_pid"])
    else:
        die_with_outer(libc, outer_alive)
    layers["process"] = "on: dies with the evaluator (PR_SET_PDEATHSIG), its parent checked"
    close_fds_except([0, 1, 2] + list(config["keep_fds"]))
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    set_rlimits(limits, layers)
    if seccomp is not None:
        load_seccomp(seccomp, layers)


def ending(status, cpu_seconds, cpu_limit_s):
    """How a program that ended with wait ``status`` after ``cpu_seconds`` of CPU is reported, as a
    ``subprocess`` return code: its exit code, or minus the signal that killed it. A SIGKILL once the CPU
    limit is spent is SIGXCPU: as pid 1 of its namespace the program ignores the soft limit's SIGXCPU, so
    the kernel's SIGKILL at the hard limit (one second later) is how the CPU limit ends it."""
    code = os.waitstatus_to_exitcode(status)
    if code == -_signal.SIGKILL and cpu_seconds >= cpu_limit_s:
        return -_signal.SIGXCPU
    return code


# ----------------------------------------------------------------------------------------------------
# Process and PID namespace.


def load_libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
    libc.unshare.argtypes = (ctypes.c_int,)
    return libc


def check(result, what):
    """Raise OSError (with errno) unless a libc call returned 0."""
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def die_with_parent(libc, parent_pid):
    """Arm SIGKILL on the parent's death, then exit at once if the parent has already gone (or is not the
    evaluator)."""
    check(libc.prctl(PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:
        os._exit(1)


def die_with_outer(libc, outer_alive):
    """The same for the inner, whose parent (the outer) is outside its PID namespace: getppid() is 0
    there. ``outer_alive`` is a pipe's read end whose write end only the outer holds: EOF means it died."""
    check(libc.prctl(PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    try:
        if os.read(outer_alive, 1) == b"":
            os._exit(1)
    except BlockingIOError:  # nothing to read, writer open: the outer is alive
        pass


def close_fds_except(keep):
    """Close every file descriptor but those in ``keep``."""
    low = 0
    for fd in sorted(set(keep)) + [max([resource.getrlimit(resource.RLIMIT_NOFILE)[0]] + keep) + 1]:
        if low < fd:  # an empty range would close everything: os.closerange(0, 0) is close_range(0, ~0)
            os.closerange(low, fd)  # one close_range(2) call where the kernel has it
        low = fd + 1


def enter_namespaces(libc, root, layers):
    """New mount, PID, network and IPC namespaces (in a new user namespace when not root), with every
    mount private. False, with the layers reported off, when the kernel refuses them."""
    before = os.stat("/proc/self/ns/mnt").st_ino
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC
    uid, gid = os.getuid(), os.getgid()
    if root and libc.unshare(flags) == 0:
        how = "as root"
    elif libc.unshare(CLONE_NEWUSER | flags) == 0:
        how = "in a user namespace"
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                           ("/proc/self/gid_map", f"{gid} {gid} 1")):
            with open(path, "w") as f:
                f.write(text)
    else:
        why = f"off: unshare failed ({os.strerror(ctypes.get_errno())})"
        for name in ("pid", "network", "ipc", "filesystem"):
            layers[name] = why
        return False
    # Never touch mounts unless they are verifiably ours and private: otherwise changes would reach the host.
    if os.stat("/proc/self/ns/mnt").st_ino == before:
        raise OSError("unshare(CLONE_NEWNS) succeeded but the mount namespace is the host's")
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making every mount private")
    layers["network"] = f"on: new network namespace {how} (loopback down)"
    layers["ipc"] = "on: new IPC namespace"
    layers["pid"] = "on: new PID namespace, the program is its pid 1 (no other process has a pid it can name)"
    return True


def fork_program(libc, cpu_limit_s):
    """Fork the inner, pid 1 of the new PID namespace, and return (in the inner) the read end of a pipe
    that tells whether the outer lives. The outer closes every descriptor but that pipe's write end (stdio
    and the channel included: only the inner serves it), waits, and mirrors the inner's end: it never
    returns."""
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)  # if ignored (it survives exec), the kernel would reap the inner
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(alive_w)
        os.set_blocking(alive_r, False)
        return alive_r
    try:
        close_fds_except([alive_w])
        _, status, usage = os.wait4(pid, 0)
        code = ending(status, usage.ru_utime + usage.ru_stime, cpu_limit_s)
        if code < 0:
            number = -code
            libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no core dump of the outer, whatever its RLIMIT_CORE
            if number != _signal.SIGKILL:  # Python ignores SIGPIPE and SIGXFSZ; the caller may have handlers
                _signal.signal(number, _signal.SIG_DFL)
            _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [number])
            os.kill(os.getpid(), number)
            code = 128 + number  # only if the signal did not end it
    except BaseException:  # whatever happens, the outer must not return into the caller's code
        code = 1
    os._exit(code)


# ----------------------------------------------------------------------------------------------------
# Filesystem and disk.


def build_root(libc, workdir, library, limits, layers):
    """Build the new root on a tmpfs mounted over the (empty) host work dir, a place that is ours, with
    ``library`` (the interpreter's directories) among what it shows; make everything in it read-only but
    the work dir's own tmpfs, and pivot into it."""
    dirs, files, links = library + ["/usr"], list(DEVICES), []
    for path in HOST_LINKS:
        if os.path.islink(path):
            links.append(path)
        elif os.path.isdir(path):
            dirs.append(path)
    if os.path.isfile(LOADER_CACHE):
        files.append(LOADER_CACHE)
    dirs = outermost(dirs)
    if any(workdir.startswith(d + "/") for d in dirs):
        raise ValueError(f"isolate: the work dir {workdir} lies inside a directory the program reads")
    new_root = workdir.encode()
    check(libc.mount(b"tmpfs", new_root, b"tmpfs", MS_NOSUID | MS_NODEV, ROOT_TMPFS), "mounting the new root")
    # Every mount point is made before anything is bound, so no mkdir can land in a bound host directory.
    old_umask = os.umask(0o022)  # the new root's directories are 755: any uid can walk to the stdlib
    try:
        for path in dirs + [workdir, "/proc"]:
            os.makedirs(workdir + path)
        for path in files:
            os.makedirs(os.path.dirname(workdir + path), exist_ok=True)
            os.close(os.open(workdir + path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    finally:
        os.umask(old_umask)
    for path in dirs + files:  # MS_REC: a user namespace refuses to bind a mount without its submounts
        check(libc.mount(path.encode(), new_root + path.encode(), None, MS_BIND | MS_REC, None), "binding " + path)
    for path in links:  # last: a link followed by a later mkdir could lead out of the new root
        os.symlink(os.readlink(path), workdir + path)
    size = b"size=%d,nr_inodes=%d,mode=700" % (limits["disk_bytes"], limits["disk_files"] + 1)  # + its root
    check(libc.mount(b"tmpfs", new_root + new_root, b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, size), "mounting the work dir")
    make_read_only(libc, new_root, keep=new_root + new_root)
    os.chdir(workdir)
    machine = os.uname().machine
    if machine not in PIVOT_ROOT:
        raise OSError(f"pivot_root: its system call number on {machine} is not known here")
    check(libc.syscall(ctypes.c_long(PIVOT_ROOT[machine]), b".", b"."), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "detaching the old root")  # it was stacked on the new one
    shown = ", ".join(dirs + links + [f for f in files if not f.startswith("/dev/")])
    layers["filesystem"] = f"on: a new root; read-only: {shown}, /dev/{{null,zero,random,urandom}}; writable: the work dir only"
    layers["disk"] = f"on: the work dir is a private tmpfs of {limits['disk_bytes']} bytes and {limits['disk_files']} files"


def interpreter_dirs():
    """Directories the interpreter reads after isolation (lazy imports, extension modules): those on
    sys.path, and the directory of libpython when the interpreter is linked against one."""
    dirs = [os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)]  # /lib/... is /usr/lib/... here
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            path = line.split(maxsplit=5)[5:]
            if path and b"/libpython" in path[0]:
                dirs.append(os.path.dirname(path[0].strip().decode()))
                break
    return [d for d in dirs if d != "/"]  # never the whole host


def outermost(dirs):
    """``dirs`` without duplicates and without those inside another of them."""
    dirs = sorted(set(dirs))
    return [d for d in dirs if not any(d.startswith(o + "/") for o in dirs)]


def make_read_only(libc, new_root, keep):
    """Remount read-only every mount at or under ``new_root`` except ``keep``, keeping its locked flags."""
    with open("/proc/self/mountinfo", "rb") as f:
        mounts = [line.split()[4:6] for line in f]
    points = set()
    for raw_point, options in mounts:
        point = unescape_mount_point(raw_point)
        if point != keep and (point == new_root or point.startswith(new_root + b"/")):
            kept = sum(KEPT_MOUNT_FLAGS.get(o, 0) for o in options.split(b","))
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY | kept
            check(libc.mount(None, point, None, flags, None), f"making {point.decode(errors='replace')} read-only")
            points.add(point)
    if new_root not in points:
        raise OSError(f"the new root {new_root.decode(errors='replace')} is not in mountinfo: it stayed writable")


def unescape_mount_point(raw):
    """mountinfo writes space, tab, newline and backslash as \\ooo (octal), so every backslash starts one."""
    head, *escaped = raw.split(b"\\")
    return head + b"".join(bytes([int(part[:3], 8)]) + part[3:] for part in escaped)


def mapped(path, ident):
    """Whether ``ident`` lies in a range of a uid_map / gid_map file."""
    with open(path) as f:
        for line in f:
            inside, _, count = (int(x) for x in line.split())
            if inside <= ident < inside + count:
                return True
    return False


# ----------------------------------------------------------------------------------------------------
# User, limits, syscall filter.


def switch_user(libc, workdir, uid, library, layers):
    """As root, become ``uid`` (no groups, no capabilities) and give it the work dir; else drop every
    capability and keep the uid. A uid that could not read ``library`` (the interpreter's directories) is
    not used."""
    if uid is not None:
        blocked = [path for path in library if not readable_by_others(path)]
        if blocked:
            layers["user"] = f"off: other users cannot read {blocked[0]}, which the program needs"
            uid = None
    if uid is not None:
        os.chown(workdir, uid, uid)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # from root to non-root: every capability is cleared too
        layers["user"] = f"on: uid {uid}, no groups, no capabilities"
    else:
        drop_capabilities(libc)
        layers.setdefault("user", "off: not root")
        layers["user"] += f"; capabilities dropped, uid {os.getuid()} kept"


def readable_by_others(path):
    """Whether a uid without groups can walk to ``path`` and list it."""
    parts = path.split("/")[1:]
    for i in range(len(parts)):
        if not os.stat("/" + "/".join(parts[:i])).st_mode & 0o001:
            return False
    return os.stat(path).st_mode & 0o005 == 0o005


def drop_capabilities(libc):
    """Empty this process's effective, permitted and inheritable capability sets (capset(2))."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    empty = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} sets, all zero
    check(libc.capset(ctypes.byref(Header(0x20080522, 0)), empty), "capset")  # _LINUX_CAPABILITY_VERSION_3


def set_rlimits(limits, layers):
    """Soft and hard limits; without capabilities the program cannot raise a hard one."""
    for name, soft, hard in (
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_CPU", limits["cpu_s"], limits["cpu_s"] + 1),
        ("RLIMIT_FSIZE", limits["file_bytes"], limits["file_bytes"]),
        ("RLIMIT_NOFILE", 64, 64),
        ("RLIMIT_NPROC", 0, 0),
        ("RLIMIT_AS", limits["memory_mb"] << 20, limits["memory_mb"] << 20),
    ):
        resource.setrlimit(getattr(resource, name), (soft, hard))
    layers["rlimits"] = (
        f"on: AS {limits['memory_mb']} MiB, CPU {limits['cpu_s']} s, FSIZE {limits['file_bytes']} B, NOFILE 64, CORE 0, "
        f"NPROC 0{' (ignored: the program is root)' if os.getuid() == 0 else ''}"
    )


def load_libseccomp(layers):
    """libseccomp, loaded while the host's library paths are still visible; None (reported) if missing."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError as err:
        layers["seccomp"] = f"off: libseccomp is not installed ({err})"
        return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCompare))
    lib.seccomp_load.argtypes = lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    return lib


def load_seccomp(lib, layers):
    """Load the filter: :data:`REFUSED_SYSCALLS` fail with EPERM, ``clone3`` with ENOSYS (so a libc falls
    back to ``clone``, refused too), ``prctl(PR_SET_PDEATHSIG)`` with EPERM (the program must not outlive
    the evaluator). libseccomp's default kills on a foreign architecture."""
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        def refuse(name, error, *compares):
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:  # not a system call on this architecture
                return 0
            array = (ArgCompare * len(compares))(*compares) if compares else None
            result = lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO | error, number, len(compares), array)
            if result < 0:
                raise OSError(-result, f"seccomp_rule_add({name}): {os.strerror(-result)}")
            return 1

        count = sum(refuse(name, errno.EPERM) for name in REFUSED_SYSCALLS) + refuse("clone3", errno.ENOSYS)
        # The option is an int: compare its low 32 bits only, or 1 + (1 << 32) would slip through.
        count += refuse("prctl", errno.EPERM, ArgCompare(0, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, PR_SET_PDEATHSIG))
        result = lib.seccomp_load(ctx)
        if result < 0:
            raise OSError(-result, f"seccomp_load: {os.strerror(-result)}")
    finally:
        lib.seccomp_release(ctx)
    layers["seccomp"] = (
        f"on: {count} system calls refused (signals, ptrace, fork/clone/exec, sockets, mounts, ...); "
        "other architectures' system calls kill the program"
    )
