#!/usr/bin/env python3
"""Writes a one-layer OCI image archive from files on this machine, for `ctr images import`.

No registry is reachable here, so the local node's images are built from this checkout:

  image.py OUT.tar REF --entrypoint /usr/local/bin/cubbyhole --user 65532:65532 \\
      --file target/debug/cubbyhole=/usr/local/bin/cubbyhole --libs --nonroot

--file SRC=DEST   copies SRC into the image at DEST (mode kept); repeatable
--tree SRC=DEST   copies the directory tree SRC into the image at DEST: directories, files and
                  symlinks (as links), modes kept; repeatable
--skip NAME       leaves out of every --tree each directory or file named NAME (a shell pattern
                  such as `_tkinter.*` also works), at any depth below its SRC; repeatable,
                  e.g. --skip test --skip __pycache__
--link NAME=DEST  a symlink NAME -> DEST; repeatable
--libs            also copies every shared library that the --file executables and the ELF files
                  in the trees (`.so` files and executables) link (from ldd), at the same paths,
                  with the dynamic loader: the layout of a distroless "cc" base
--nonroot         /etc/passwd and /etc/group with root and nonroot (65532), as distroless has

A Python interpreter, say, at the paths it has here (so it finds its prefix by itself):

  image.py OUT.tar REF --entrypoint /opt/py/bin/python3.11 /app/agent.py \\
      --file /opt/py/bin/python3.11=/opt/py/bin/python3.11 \\
      --tree /opt/py/lib/python3.11=/opt/py/lib/python3.11 --skip test --skip __pycache__ \\
      --file agent.py=/app/agent.py --libs --nonroot

The archive is reproducible: fixed times and owners, entries sorted.
"""
import argparse
import fnmatch
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def linked_libraries(executable):
    """Absolute paths of the shared libraries `executable` loads (none for a static one)."""
    out = subprocess.run(["ldd", executable], capture_output=True, text=True)
    libs = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                libs.append(target)
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def is_elf(path):
    """Whether `path` is an ELF file (an executable or a shared library ldd can read)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def tree_entries(src, dest, skip):
    """Entries for the tree `src` copied to `dest`, without any name matching a `skip` pattern,
    and the ELF files among them (for --libs)."""
    def skipped(name):
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in skip)

    entries, elves = [], []
    root = os.stat(src)
    entries.append((dest, "dir", None, root.st_mode & 0o7777))
    for top, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not skipped(d))
        rel = os.path.relpath(top, src)
        at = dest if rel == "." else os.path.join(dest, rel)
        for name in sorted(dirs):
            path = os.path.join(top, name)
            if os.path.islink(path):  # os.walk does not descend into it: a link it stays
                entries.append((os.path.join(at, name), "link", os.readlink(path), 0o777))
                dirs.remove(name)
            else:
                entries.append((os.path.join(at, name), "dir", None, os.stat(path).st_mode & 0o7777))
        for name in sorted(files):
            if skipped(name):
                continue
            path = os.path.join(top, name)
            if os.path.islink(path):
                entries.append((os.path.join(at, name), "link", os.readlink(path), 0o777))
                continue
            mode = os.stat(path).st_mode & 0o7777
            entries.append((os.path.join(at, name), "file", path, mode))
            if (".so" in name or mode & 0o111) and is_elf(path):
                elves.append(path)
    return entries, elves


def add_dirs(tar, path, seen):
    """Adds the parent directories of `path` (0755, root) once each."""
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d in seen:
            continue
        seen.add(d)
        info = tarfile.TarInfo(d)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)


def layer(entries):
    """An uncompressed tar of `entries`: (dest, kind, payload, mode) sorted by dest."""
    buf = io.BytesIO()
    seen = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dest, kind, payload, mode in sorted(entries):
            add_dirs(tar, dest, seen)
            info = tarfile.TarInfo(dest.strip("/"))
            info.mode = mode
            if kind == "dir":
                if info.name in seen:
                    continue
                seen.add(info.name)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "link":
                info.type = tarfile.SYMTYPE
                info.linkname = payload
                tar.addfile(info)
            else:
                data = payload if isinstance(payload, bytes) else open(payload, "rb").read()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def blob(out, data):
    """Adds `data` under blobs/sha256/ and returns its descriptor fields."""
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    info.mode = 0o644
    out.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("ref")
    p.add_argument("--entrypoint", nargs="+", default=[])
    p.add_argument("--user", default="")
    p.add_argument("--file", action="append", default=[])
    p.add_argument("--tree", action="append", default=[])
    p.add_argument("--skip", action="append", default=[])
    p.add_argument("--link", action="append", default=[])
    p.add_argument("--libs", action="store_true")
    p.add_argument("--nonroot", action="store_true")
    a = p.parse_args()

    entries = [("/tmp", "dir", None, 0o1777)]
    executables = []
    for spec in a.file:
        src, dest = spec.split("=", 1)
        entries.append((dest, "file", src, os.stat(src).st_mode & 0o7777))
        if os.access(src, os.X_OK):
            executables.append(src)
    for spec in a.tree:
        src, dest = spec.split("=", 1)
        found, elves = tree_entries(src, dest, a.skip)
        entries += found
        executables += elves
    for spec in a.link:
        name, dest = spec.split("=", 1)
        entries.append((name, "link", dest, 0o777))
    if a.libs:
        libs = sorted({lib for exe in executables for lib in linked_libraries(exe)})
        present = {dest.strip("/") for dest, _, _, _ in entries}
        for lib in libs:
            if lib.strip("/") not in present:  # a library that is in a tree already
                entries.append((lib, "file", os.path.realpath(lib), 0o755))
    if a.nonroot:
        passwd = b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
        group = b"root:x:0:\nnonroot:x:65532:\n"
        entries += [("/etc/passwd", "file", passwd, 0o644), ("/etc/group", "file", group, 0o644),
                    ("/home/nonroot", "dir", None, 0o700)]

    diff = layer(entries)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": a.entrypoint, "User": a.user, "Env": [PATH_ENV], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(diff).hexdigest()]},
    }
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w") as out:
        layer_desc = blob(out, diff)  # uncompressed: no CPU spent on gzip
        config_desc = blob(out, json.dumps(config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
        }
        manifest_desc = blob(out, json.dumps(manifest, sort_keys=True).encode())
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": a.ref, "org.opencontainers.image.ref.name": a.ref},
            }],
        }
        for name, data in (("oci-layout", {"imageLayoutVersion": "1.0.0"}), ("index.json", index)):
            raw = json.dumps(data, sort_keys=True).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            info.mode = 0o644
            out.addfile(info, io.BytesIO(raw))
    os.replace(tmp, a.out)


if __name__ == "__main__":
    sys.exit(main())
