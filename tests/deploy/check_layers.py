#!/usr/bin/python3
"""The layers hold: what each folder may include, followed through the repository's headers.

Usage: check_layers.py REPO_ROOT [--self-test]

For every C++ file under a ruled folder, the repository headers it includes are followed
transitively; the file breaks its folder's rule when it, or any header it reaches, includes
a forbidden header (LibTorch in the client, gRPC or generated protos in the domain, DCMTK in
the training core, anything of an upper layer in a lower one). Each break is printed with
the include chain that leads to it, and the exit status is 1.
"""
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^">]+)[">]', re.MULTILINE)

TORCH = ("torch/", "ATen/", "c10/", "caffe2/")
DCMTK = ("dcmtk/",)
GRPC = ("grpcpp/", "grpc/")
PROTOS = ("miseg/v1/", "server/import/import_sources.pb.h", "server/dicom_node/node_config.pb.h")
SQLITE = ("sqlite3.h",)
UPPER_THAN_CORE = ("server/", "client/", "bench/")

# Folder (relative to the root) -> forbidden include prefixes, with the reason printed.
RULES = [
    ("core/", UPPER_THAN_CORE + GRPC + PROTOS + SQLITE, "core is the domain's lowest layer"),
    ("core/train/", DCMTK, "the training core builds alone against LibTorch"),
    ("core/dist/", DCMTK, "process groups build with the training core"),
    ("core/dicom/", TORCH, "DICOM I/O does not link LibTorch"),
    ("core/phantom/", TORCH + DCMTK, "the phantom is plain C++"),
    ("core/volume/", TORCH + DCMTK, "volume types are plain C++"),
    ("core/common/", TORCH + DCMTK, "common helpers are Abseil only"),
    ("client/", TORCH + ("server/", "core/train/", "core/dist/"),
     "the client never links LibTorch or the server"),
    ("server/store/", TORCH + DCMTK + GRPC + PROTOS, "the store holds records, not messages"),
    ("server/domain/", GRPC + PROTOS + ("server/edge/", "server/jobs/"),
     "the domain persists its own structs, below the gRPC edge"),
    ("server/jobs/", GRPC + ("server/edge/",), "jobs run below the gRPC edge"),
    ("server/rank/", GRPC + ("server/edge/", "server/domain/", "server/store/"),
     "a rank runs anywhere through its I/O interface"),
    ("server/cluster/", GRPC + ("server/edge/", "server/domain/"), "the coordinator is not gRPC"),
    ("server/dicom_node/", GRPC + ("server/edge/",), "the DICOM node calls the domain directly"),
]
SOURCE_SUFFIXES = (".h", ".cc")


def includes_of(path, cache):
    if path not in cache:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                cache[path] = INCLUDE.findall(f.read())
        except OSError:
            cache[path] = []
    return cache[path]


def first_break(root, path, forbidden, cache):
    """The include chain from `path` to a forbidden include, or None."""
    seen = {path}
    stack = [(path, [os.path.relpath(path, root)])]
    while stack:
        current, chain = stack.pop()
        for name in includes_of(current, cache):
            if name.startswith(forbidden):
                return chain + [name]
            local = os.path.join(root, name)
            if os.path.isfile(local) and local not in seen:
                seen.add(local)
                stack.append((local, chain + [name]))
    return None


def check(root):
    cache = {}
    breaks = []
    for folder, forbidden, why in RULES:
        top = os.path.join(root, folder)
        for directory, _, files in os.walk(top):
            for name in sorted(files):
                if not name.endswith(SOURCE_SUFFIXES):
                    continue
                chain = first_break(root, os.path.join(directory, name), forbidden, cache)
                if chain:
                    breaks.append(f"{folder}: {why}: {' -> '.join(chain)}")
    return breaks


def self_test():
    """The checker finds a break two headers deep and passes a clean tree."""
    import tempfile
    with tempfile.TemporaryDirectory() as root:
        def write(rel, text):
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            with open(os.path.join(root, rel), "w") as f:
                f.write(text)
        write("client/cli.cc", '#include "client/a.h"\n')
        write("client/a.h", '#include "core/volume/v.h"\n')
        write("core/volume/v.h", "#include <vector>\n")
        assert check(root) == [], check(root)
        write("core/volume/v.h", "#include <torch/types.h>\n")
        found = check(root)
        assert any("client/cli.cc -> client/a.h -> core/volume/v.h -> torch/types.h" in b
                   for b in found), found
    print("self-test passed")


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    if "--self-test" in sys.argv:
        self_test()
    root = os.path.abspath(sys.argv[1])
    for folder, _, _ in RULES:
        if not os.path.isdir(os.path.join(root, folder)):
            print(f"missing ruled folder {folder}")
            return 1
    breaks = check(root)
    for line in breaks:
        print(line)
    print(f"{len(RULES)} rules, {len(breaks)} breaks")
    return 1 if breaks else 0


if __name__ == "__main__":
    sys.exit(main())
