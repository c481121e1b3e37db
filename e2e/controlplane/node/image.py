#!/usr/bin/env python3
"""Writes a one-layer OCI image archive from files on this machine, for `ctr images import`.

No registry is reachable here, so the local node's images are built from this checkout:

  image.py OUT.tar REF --entrypoint /usr/local/bin/cubbyhole --user 65532:65532 \\
      --file target/debug/cubbyhole=/usr/local/bin/cubbyhole --libs --nonroot

--file SRC=DEST   copies SRC into the image at DEST (mode kept); repeatable
--link NAME=DEST  a symlink NAME -> DEST; repeatable
--libs            also copies every shared library the --file executables link (from ldd), at
                  the same paths, with the dynamic loader: the layout of a distroless "cc" base
--nonroot         /etc/passwd and /etc/group with root and nonroot (65532), as distroless has

The archive is reproducible: fixed times and owners, entries sorted.
"""
import argparse
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
    for spec in a.link:
        name, dest = spec.split("=", 1)
        entries.append((name, "link", dest, 0o777))
    if a.libs:
        libs = sorted({lib for exe in executables for lib in linked_libraries(exe)})
        for lib in libs:
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
