"""A Debian package as a data source, for the real-data converters (make_coq_premises.py,
make_metamath_premises.py): `apt-get download` into a cache folder, unpack with `dpkg-deb -x`,
and the .deb's SHA-256 for SOURCE.json. Python 3 standard library only."""

import glob
import hashlib
import os
import subprocess
import sys


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(package, cache, inside):
    """The newest `<package>_*.deb` in `cache` (downloaded when there is none), unpacked to
    `cache/x`; returns (path of `inside` in the unpacked tree, .deb path). `inside` may be a glob."""
    os.makedirs(cache, exist_ok=True)
    debs = sorted(glob.glob(os.path.join(cache, f"{package}_*.deb")))
    if not debs:
        subprocess.run(["apt-get", "download", package], cwd=cache, check=True, stdout=sys.stderr)
        debs = sorted(glob.glob(os.path.join(cache, f"{package}_*.deb")))
    deb = debs[-1]
    root = os.path.join(cache, "x")
    if not os.path.isdir(root):
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True, stdout=sys.stderr)
    found = sorted(glob.glob(os.path.join(root, inside)))
    if not found:
        sys.exit(f"{deb}: no {inside} inside")
    return found[0], deb
