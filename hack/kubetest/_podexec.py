"""Exec one container's process inside its own mount and UTS namespaces.

Run by the pod runner as ``python -I -S _podexec.py SPEC.json`` (standard
library only, so it starts fast). It unshares, bind-mounts the pod's volumes
and termination-message file at their paths (visible to this process tree
only), sets the hostname to the pod name, changes directory and execs the
container's command: the process it leaves behind *is* the container process.

Exit codes 126/127 (and a message on stderr) mean the container could not be
started; the runner reports them as StartError, as the kubelet does.
"""

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

libc = ctypes.CDLL(None, use_errno=True)


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, dst, flags):
    _check(libc.mount(src.encode() if src else None, dst.encode(), None, flags, None), f"mount {src} on {dst}")


def _enter_namespaces(hostname):
    if os.geteuid() == 0:
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    else:
        # Without root, a user namespace grants the mount and UTS namespaces;
        # the process then sees itself as root, files keep their real owner.
        uid, gid = os.geteuid(), os.getegid()
        _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWUTS), "unshare (user namespace)")
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
    # Keep our mounts out of the host's namespace (and the host's shared
    # propagation out of ours).
    _mount(None, "/", MS_REC | MS_PRIVATE)
    if hostname:
        name = hostname.encode()
        _check(libc.sethostname(name, len(name)), "sethostname")


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    workdir = spec.get("workingDir") or "/"
    try:
        # The runner's scratch working directory may sit under a path a volume covers (/tmp).
        early_cwd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY) if os.path.isdir(workdir) else None
    except OSError:
        early_cwd = None
    try:
        if spec.get("namespaces", True):
            _enter_namespaces(spec.get("hostname"))
            # Open every source before mounting anything: a volume mounted over /tmp would
            # otherwise hide sources that live under /tmp (the runner's state often does).
            mounts = spec.get("mounts", [])
            o_path = getattr(os, "O_PATH", 0o10000000)
            fds = [os.open(m["source"], o_path) for m in mounts]
            targets = [m["target"].rstrip("/") or "/" for m in mounts]
            keep = [(p, os.open(p, o_path)) for p in spec.get("keep", [])
                    if any(p == t or p.startswith(t.rstrip("/") + "/") for t in targets)]
            for m, fd in zip(mounts, fds):
                _mount(f"/proc/self/fd/{fd}", m["target"], MS_BIND | MS_REC)
                if m.get("readOnly"):
                    try:
                        _mount(None, m["target"], MS_BIND | MS_REMOUNT | MS_RDONLY)
                    except OSError:
                        # In a user namespace some mounts' flags are locked; the
                        # volume then stays writable (documented limit).
                        pass
            for path, fd in keep:
                # The image's files stay visible under a volume mounted over their parent.
                os.makedirs(path, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}", path, MS_BIND | MS_REC)
        try:
            os.chdir(workdir)
        except FileNotFoundError:
            if early_cwd is None:
                raise
            os.fchdir(early_cwd)
        if early_cwd is not None:
            os.close(early_cwd)
    except OSError as e:
        sys.stderr.write(f"model-operator pod runner: cannot set up container: {e}\n")
        sys.stderr.flush()
        os._exit(126)
    argv = spec["argv"]
    try:
        os.execve(argv[0], argv, spec["env"])
    except OSError as e:
        sys.stderr.write(f"model-operator pod runner: cannot exec {argv[0]}: {e}\n")
        sys.stderr.flush()
        os._exit(127 if isinstance(e, FileNotFoundError) else 126)


if __name__ == "__main__":
    main()
