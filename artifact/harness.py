"""The verifying harness inside the contained child process (`golf verify`; the parent side is
`artifact.contain`). This file's source, followed by a call of `main()`, runs as `python -I -B -c`
with one JSON argument, before and around the submission's `run.py`. It imports only the
standard library at module level: the project itself cannot be imported in the child.

In order, in the fresh (still single-threaded) interpreter:
1. `confine`: limits and fences on this very process, each where the OS offers it —
   RLIMIT_DATA (memory), RLIMIT_CPU, RLIMIT_FSIZE (largest file written), no core dumps;
   a new user + network + PID namespace (no network at all; every process it starts dies with
   it), entered unprivileged or as root alike; Landlock (Linux ≥ 5.13): file writes only beneath
   the run's temporary root (and /dev/null, GPU device nodes), TCP bind/connect refused (ABI ≥ 4),
   no signals to and no abstract-socket connections with processes outside (ABI ≥ 6); no new
   privileges. It returns what it enforced; the verifier reports it.
2. `guard_imports`: a finder first on sys.meta_path refuses any module whose file lies in one of
   the project's package folders (a missing shipped module fails, never falls back).
3. `watch_scoring`: a global forward pre-hook on torch modules; the first time a module runs at
   the top level (not inside another module's forward), the digest of its state dict
   (`state_digest`) goes down the record pipe — the state actually scored, seen by the harness,
   not reported by the submission. (A hostile run.py shares the process and could unhook it:
   the verifier's binding check is its own re-score of the decoded weights.)
4. run.py as `__main__`, with the entry's arguments.

`prepare()` does steps 1 (and the PID namespace's init); `run_submission()` all four. The
verifier's re-score of a model whose code ships in the submission runs `prepare()` and then
golf's own decoder and scoring (artifact.contain.RESCORE).
"""

import ctypes
import glob
import hashlib
import json
import os
import platform
import resource
import runpy
import sys

CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID = 0x10000000, 0x40000000, 0x20000000
PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG = 38, 1
LANDLOCK_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}  # create, add_rule, restrict
# Landlock filesystem rights that write, by the ABI version that introduced them
LANDLOCK_WRITES = {1: sum(1 << b for b in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12)), 2: 1 << 13, 3: 1 << 14}
LANDLOCK_FILE_WRITES = (1 << 1) | (1 << 14)  # write_file, truncate: what a rule on a file may grant
DEVICE_FILES = ("/dev/null", "/dev/nvidia*", "/dev/dri/*")


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _namespaces(libc):
    """A new user, network and PID namespace for this process (uid and gid map to themselves)."""
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")


def _landlock(libc, writable):
    """Restrict this process: writes only beneath `writable` (and device files); returns what
    was enforced, {} when Landlock is not available."""
    calls = LANDLOCK_SYSCALLS.get(platform.machine())
    if calls is None:
        return {}
    create, add_rule, restrict = calls
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(create, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return {}
    fs = sum(bits for v, bits in LANDLOCK_WRITES.items() if v <= abi)
    fields = [fs] + ([3] if abi >= 4 else []) + ([3] if abi >= 6 else [])  # net: bind+connect; scope: both
    attr = (ctypes.c_uint64 * len(fields))(*fields)
    ruleset = libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        return {}

    class Beneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

    try:
        for path in [writable] + [p for pattern in DEVICE_FILES for p in glob.glob(pattern)]:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = Beneath(fs if os.path.isdir(path) else fs & LANDLOCK_FILE_WRITES, fd)
                if libc.syscall(add_rule, ruleset, 1, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                    return {}
            finally:
                os.close(fd)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if libc.syscall(restrict, ruleset, ctypes.c_uint32(0)) != 0:
            return {}
    finally:
        os.close(ruleset)
    out = {"writes": f"landlock (ABI {abi}): only beneath {writable}"}
    if abi >= 4:
        out["tcp"] = "landlock: bind and connect refused"
    if abi >= 6:
        out["signals"] = "landlock: none to processes outside"
    return out


def confine(box, limits):
    """Apply the limits and fences (module docstring) to this process; return what holds."""
    enforced, missing = {}, []
    libc = _libc()
    try:
        _namespaces(libc)
        enforced["network"] = "none (own network namespace)"
        enforced["processes"] = "own PID namespace: all end with the run"
    except OSError as e:
        missing.append(f"namespaces ({e.strerror or e})")
    try:
        enforced.update(_landlock(libc, box))
    except OSError as e:
        missing.append(f"landlock ({e.strerror or e})")
    if "writes" not in enforced:
        missing.append("write fence")
    if "network" not in enforced and "tcp" not in enforced:
        missing.append("network fence")
    for name, key, value in (("memory_bytes", resource.RLIMIT_DATA, limits["memory_bytes"]),
                             ("cpu_seconds", resource.RLIMIT_CPU, limits["cpu_seconds"]),
                             ("file_bytes", resource.RLIMIT_FSIZE, limits["file_bytes"]),
                             ("core", resource.RLIMIT_CORE, 0)):
        hard = value if key != resource.RLIMIT_CPU else value + 5  # SIGXCPU first, SIGKILL 5 s later
        resource.setrlimit(key, (value, hard))
        if name != "core":
            enforced[name] = value
    enforced["not enforced"] = missing
    return enforced


def _as_init(record):
    """Fork the new PID namespace's init, and under it the process that runs the rest (an init
    does not get the signals a CPU-time limit sends). Each parent ends with its child's status:
    when the init ends, the kernel ends every process left in the namespace. A signal that ended
    a child is recorded and becomes exit 128 + signal."""
    for _ in ("init", "run"):
        pid = os.fork()
        if pid:
            while True:
                try:
                    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                    break
                except InterruptedError:
                    continue
            if code < 0:
                record({"signal": -code})
            os._exit(128 - code if code < 0 else code)
        _libc().prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)


def guard_imports(roots):
    """Refuse any module whose file (or package folder) lies inside one of `roots`."""
    roots = [os.path.realpath(r) for r in roots]

    def guarded(p):
        p = os.path.realpath(p)
        return any(p == r or p.startswith(r.rstrip(os.sep) + os.sep) for r in roots)

    class ProjectGuard:
        def find_spec(self, name, path=None, target=None):
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is None:
                    continue
                places = [spec.origin] if spec.origin and os.path.isabs(spec.origin) else []
                for place in places + list(spec.submodule_search_locations or []):
                    if guarded(place):
                        raise ImportError(f"import guard: module {name!r} would come from the project "
                                          f"source tree ({place}), not from the submission", name=name)
                return spec
            return None

    sys.meta_path.insert(0, ProjectGuard())


def state_digest(state):
    """SHA-256 over a state dict: every entry's name, dtype, shape and raw bytes, in name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def watch_scoring(record):
    """Record the state digest of every module the first time it runs at the top level."""
    import torch
    from torch.nn.modules import module as nn_module

    depth, seen = [0], set()

    def before(mod, args):
        if depth[0] == 0 and id(mod) not in seen:
            seen.add(id(mod))
            with torch.no_grad():
                record({"scored": {"digest": state_digest(mod.state_dict()), "module": type(mod).__name__}})
        depth[0] += 1

    def after(mod, args, out):
        depth[0] -= 1

    nn_module.register_module_forward_pre_hook(before)
    nn_module.register_module_forward_hook(after, always_call=True)


def prepare():
    """Read the configuration, confine this process and report what holds; (config, record)."""
    cfg = json.loads(sys.argv[1])
    fd = cfg["record_fd"]

    def record(obj):
        os.write(fd, (json.dumps(obj) + "\n").encode())

    os.chdir(cfg["run_dir"])
    enforced = confine(cfg["box"], cfg["limits"])
    if "processes" in enforced:
        _as_init(record)
    record({"enforced": enforced})
    return cfg, record


def run_submission():
    """Confine, guard imports, watch what is scored, run run.py (module docstring)."""
    cfg, record = prepare()
    guard_imports(cfg["guarded"])
    watch_scoring(record)
    entry = os.path.abspath("run.py")
    sys.argv = [entry] + cfg["args"]
    runpy.run_path(entry, run_name="__main__")
