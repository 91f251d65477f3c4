"""Fixtures of the Python package's tests: the installed `miseg` package (from the venv
that PythonPackage.Install builds) driving a real miseg-server on free loopback ports, with
a token file (admin, reader) and --max_request_mib=1 (so one large file is
RESOURCE_EXHAUSTED), and small phantom studies written by the `miseg` CLI.

The binaries come from the environment (ctest sets them): MISEG_SERVER, MISEG_CLI.
Synchronisation never sleeps: the server is ready when it logs "serving miseg.v1"
(tests/python/miseg_server_process.py), jobs are followed with Job.watch/wait."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, Iterator, Sequence

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from miseg_server_process import ServerProcess  # noqa: E402

import miseg  # noqa: E402  (the installed package, not the source folder)

ADMIN_TOKEN = "py-admin-" + "c0ffee"
READER_TOKEN = "py-reader-" + "5eed42"
CLASSES = ["background", "right_ventricle", "myocardium", "left_ventricle"]
STARTUP_TIMEOUT_S = 60

# Tiny models: seconds on two CPU cores (tests/server/api_client.cc, TinyHyperparameters).
TINY = dict(grid_size=32, widths=[8, 16], labeled_batch=2, unlabeled_batch=2, warmup_steps=1,
            rampup_steps=2, seed=11)


def binary(variable: str) -> str:
    path = os.environ.get(variable)
    if not path or not os.access(path, os.X_OK):
        pytest.exit("%s must name the executable (ctest sets it)" % variable, returncode=2)
    return path


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def start_server(work_dir: str, data_dir: str, name: str, listen: str = "127.0.0.1:0",
                 flags: Sequence[str] = ()) -> ServerProcess:
    server = ServerProcess(os.path.join(work_dir, "bin", "miseg-server"), data_dir,
                           os.path.join(work_dir, name + ".ready"), list(flags), name=name,
                           listen=listen)
    server.wait_until_serving(STARTUP_TIMEOUT_S)
    return server


@pytest.fixture(scope="session")
def work_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="miseg-python-package-")
    # Copies, so a rebuild during the run cannot swap the server between start and restart.
    os.makedirs(os.path.join(path, "bin"))
    shutil.copy2(binary("MISEG_SERVER"), os.path.join(path, "bin", "miseg-server"))
    shutil.copy2(binary("MISEG_CLI"), os.path.join(path, "bin", "miseg"))
    yield path
    if not os.environ.get("MISEG_KEEP_TEST_DIR"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def phantoms(work_dir: str) -> Dict[int, str]:
    """Eight small phantom studies (seed 1): 0-3 with their DICOM SEG, 4-7 without."""
    out = os.path.join(work_dir, "phantoms")
    subprocess.run([os.path.join(work_dir, "bin", "miseg"), "phantom", out, "--count", "8",
                    "--labeled", "4", "--small", "--quiet"], check=True, timeout=120,
                   stdout=subprocess.DEVNULL)
    return {i: os.path.join(out, "subject-%03d" % i) for i in range(8)}


@pytest.fixture(scope="session")
def server(work_dir: str) -> Iterator[ServerProcess]:
    token_file = os.path.join(work_dir, "tokens")
    with open(token_file, "w") as f:
        f.write("%s admin py-admin\n" % sha256_hex(ADMIN_TOKEN))
        f.write("%s reader py-reader\n" % sha256_hex(READER_TOKEN))
    process = start_server(work_dir, os.path.join(work_dir, "data"), "server",
                           flags=["--token_file=" + token_file, "--max_request_mib=1"])
    yield process
    status = process.stop()
    process.kill()
    if status != 0:
        print(process.log(), file=sys.stderr)


@pytest.fixture(scope="session")
def address(server: ServerProcess) -> str:
    return "127.0.0.1:%d" % server.grpc_port


@pytest.fixture(scope="session")
def admin(address: str) -> Iterator[miseg.Client]:
    with miseg.Client(address, token=ADMIN_TOKEN) as client:
        yield client


@pytest.fixture(scope="session")
def reader(address: str) -> Iterator[miseg.Client]:
    with miseg.Client(address, token=READER_TOKEN) as client:
        yield client
