"""The digest of the sources the extension is compiled from (setup.py and the C++/CUDA files
under csrc/, less csrc/cuda/ for a build without the CUDA kernels). setup.py compiles it into
the build record, so that a build can be matched to its sources: `python -m drloss_cuda` says
when the sources beside an in-tree build have changed since it was built. Plain Python without
torch: setup.py loads this file by its path, before the package can be imported."""

import hashlib
import os

SOURCE_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")


def source_files(root, with_cuda=True):
    """setup.py and every C++/CUDA file under root/csrc, as sorted '/'-separated paths; without
    those under csrc/cuda/ when with_cuda is false (a CPU-only build compiles none of them)."""
    files = ["setup.py"]
    for folder, _, names in os.walk(os.path.join(root, "csrc")):
        files += [os.path.relpath(os.path.join(folder, name), root) for name in names if name.endswith(SOURCE_SUFFIXES)]
    files = sorted(path.replace(os.sep, "/") for path in files)
    return files if with_cuda else [path for path in files if not path.startswith("csrc/cuda/")]


def source_digest(root, with_cuda=True):
    """SHA-256 (hex) of the paths and contents of source_files(root, with_cuda)."""
    digest = hashlib.sha256()
    for path in source_files(root, with_cuda):
        with open(os.path.join(root, path), "rb") as source:
            content = source.read()
        digest.update(f"{path}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def source_root(package_dir):
    """The source tree an in-tree (editable) build sits in: the folder above the package when
    it holds setup.py and csrc/, else None (an installed wheel or sdist)."""
    root = os.path.dirname(os.path.abspath(package_dir))
    if os.path.isfile(os.path.join(root, "setup.py")) and os.path.isdir(os.path.join(root, "csrc")):
        return root
    return None
