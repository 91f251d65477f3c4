"""Helpers of the deployment tests: podman with deploy/container's settings, free ports,
waiting on conditions (never on time alone), the CLI."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SKIP = 77  # ctest's SKIP_RETURN_CODE for these tests


def podman_env():
    """The environment deploy/container/podman-env.sh sets up."""
    env = dict(os.environ)
    if env.get("MISEG_PODMAN_SYSTEM") != "1":
        env.setdefault("CONTAINERS_CONF", os.path.join(REPO, "deploy/container/containers.conf"))
        env.setdefault("CONTAINERS_STORAGE_CONF",
                       os.path.join(REPO, "deploy/container/storage.conf"))
    return env


def require_podman():
    """Skips the test (exit 77) only when podman cannot run containers at all here."""
    if shutil.which("podman") is None:
        print("SKIP: podman is not installed (deploy/install-deps.sh installs it)")
        sys.exit(SKIP)
    info = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"],
                          env=podman_env(), capture_output=True, text=True)
    if info.returncode != 0:
        print("SKIP: podman cannot run on this machine: " + info.stderr.strip()[-500:])
        sys.exit(SKIP)


def run(argv, check=True, timeout=600, env=None, **kwargs):
    """Runs argv, returns the CompletedProcess; on failure (check) raises with its output."""
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                            timeout=timeout, env=env, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError("%s exited %d\nstdout:\n%s\nstderr:\n%s" % (
            " ".join(map(str, argv)), result.returncode, result.stdout[-4000:],
            result.stderr[-4000:]))
    return result


def podman(*args, check=True, timeout=600):
    return run(["podman", *args], check=check, timeout=timeout, env=podman_env())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, condition, deadline_s):
    """Polls condition() until it returns a true value (returned) or deadline_s pass."""
    deadline = time.monotonic() + deadline_s
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # not there yet: keep the last reason for the message
            last_error = error
        time.sleep(0.5)
    raise AssertionError("%s: not within %d s (last error: %r)" % (what, deadline_s, last_error))


def http_get(url, timeout=10):
    import urllib.request
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.read()


def http_json(url, data=None, timeout=30):
    import urllib.request
    request = urllib.request.Request(url, data=data)
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.loads(reply.read())


def check(condition, message):
    if not condition:
        raise AssertionError(message)
