#!/usr/bin/python3
"""Installs the miseg Python package the way the README says, offline, into a fresh venv
that sees Debian's packages, for the other Python package tests (ctest fixture
miseg_python_venv):

  python3 -m venv --system-site-packages VENV
  VENV/bin/python -m pip install --no-index --no-build-isolation client/python

pip builds in the project folder (build/, *.egg-info); to keep the source tree as it is, it
installs from a copy of client/python next to the venv. Then registers the venv as a Jupyter
kernel inside the venv (kernel "miseg-venv", for the notebook test) and checks the installed
package: importable from the venv, its generated stubs, their .pyi and py.typed present.

  /usr/bin/python3 install_package.py PACKAGE_DIR VENV_DIR

The venv is rebuilt under an exclusive lock on VENV_DIR.lock, and the tests that use it hold
a shared one (CMakeLists.txt runs them under `flock --shared`), so a second copy of the
suite running at the same time waits instead of replacing the venv under them.
"""

import fcntl
import os
import shutil
import subprocess
import sys


def run(*argv):
    print("+ " + " ".join(argv), flush=True)
    # PYDEVD_...: ipykernel's debugger would warn about frozen modules on every start.
    subprocess.run(argv, check=True, timeout=300,
                   env=dict(os.environ, PYDEVD_DISABLE_FILE_VALIDATION="1"))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    package, venv = (os.path.abspath(p) for p in sys.argv[1:])
    with open(venv + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        install(package, venv)


def install(package, venv):
    for generated in ("miseg_pb2.py", "miseg_pb2_grpc.py"):
        if not os.path.exists(os.path.join(package, "miseg", "v1", generated)):
            sys.exit("%s/miseg/v1/%s is missing: build the target miseg_python" % (package, generated))
    source = venv + "-source"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(package, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".ipynb_checkpoints", ".mypy_cache"))
    shutil.rmtree(venv, ignore_errors=True)
    run("/usr/bin/python3", "-m", "venv", "--system-site-packages", venv)
    python = os.path.join(venv, "bin", "python")
    run(python, "-m", "pip", "install", "--quiet", "--no-index", "--no-build-isolation", source)
    run(python, "-m", "ipykernel", "install", "--sys-prefix", "--name", "miseg-venv",
        "--display-name", "Python (miseg venv)")
    installed = subprocess.run(
        [python, "-c", "import miseg, miseg.v1.miseg_pb2_grpc, os; "
                       "print(os.path.dirname(miseg.__file__))"],
        check=True, capture_output=True, text=True, cwd="/").stdout.strip()
    if not installed.startswith(venv + os.sep):
        sys.exit("miseg imports from %s, not from the venv %s" % (installed, venv))
    for name in ("py.typed", "v1/miseg_pb2.pyi", "v1/miseg_pb2_grpc.pyi", "v1/miseg_pb2.py",
                 "v1/miseg_pb2_grpc.py"):
        if not os.path.exists(os.path.join(installed, name)):
            sys.exit("the installed package lacks %s" % name)
    print("installed miseg in %s" % installed)


if __name__ == "__main__":
    main()
