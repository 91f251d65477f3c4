"""A miseg-server subprocess for the tests that drive it from Python (the CLI test, the
Python client test): started on loopback ports the kernel picks, synchronised on its own
"serving" log line and ready file (select on its stderr, no sleeps), its log drained by a
thread so the pipe never fills."""

import os
import select
import signal
import subprocess
import sys
import threading
import time
import unittest


class ServerProcess:
    def __init__(self, binary, data_dir, ready_file, flags=(), name="miseg-server",
                 listen="127.0.0.1:0"):
        self.name = name
        self.ready_file = ready_file
        self.lines = []
        self.lock = threading.Lock()
        self.grpc_port = None
        self.metrics_port = None
        self.drain_thread = None
        self._pending = b""
        self.proc = subprocess.Popen(
            [binary,
             "--data_dir=" + data_dir,
             "--listen=" + listen,
             "--metrics_listen=127.0.0.1:0",
             "--ready_file=" + ready_file,
             "--devices=cpu",
             "--shutdown_grace_seconds=10"] + list(flags),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        self._fd = self.proc.stderr.fileno()

    def _add(self, data):
        self._pending += data
        *complete, self._pending = self._pending.split(b"\n")
        text = [line.decode("utf-8", "replace") for line in complete]
        with self.lock:
            self.lines.extend(text)
        return text

    def wait_until_serving(self, timeout_s=60):
        """Reads stderr until 'serving miseg.v1 on port N', then checks the ready file
        (written atomically before that line) against it. Returns the gRPC port."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("%s did not log 'serving miseg.v1' within %ds"
                                     % (self.name, timeout_s))
            readable, _, _ = select.select([self._fd], [], [], left)
            if not readable:
                continue
            data = os.read(self._fd, 65536)
            if not data:
                self.proc.wait(timeout=10)
                raise AssertionError("%s exited with status %s before serving"
                                     % (self.name, self.proc.returncode))
            for line in self._add(data):
                marker = "serving miseg.v1 on port "
                if marker in line:
                    logged_port = int(line.split(marker)[1].split()[0])
                    self._start_drain()
                    self._read_ready_file(logged_port)
                    return self.grpc_port

    def _start_drain(self):
        def drain():
            while True:
                try:
                    data = os.read(self._fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                self._add(data)
            if self._pending:
                self._add(b"\n")
        self.drain_thread = threading.Thread(target=drain, name=self.name + "-stderr",
                                             daemon=True)
        self.drain_thread.start()

    def _read_ready_file(self, logged_port):
        values = {}
        with open(self.ready_file) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key:
                    values[key] = int(value)
        for key in ("grpc_port", "metrics_port", "pid"):
            if key not in values:
                raise AssertionError("ready file lacks %s: %r" % (key, values))
        if values["pid"] != self.proc.pid:
            raise AssertionError("ready file pid %d, server pid %d" % (values["pid"], self.proc.pid))
        if values["grpc_port"] != logged_port or logged_port <= 0:
            raise AssertionError("ready file grpc_port %d, log says %d"
                                 % (values["grpc_port"], logged_port))
        if values["metrics_port"] <= 0:
            raise AssertionError("ready file metrics_port %d" % values["metrics_port"])
        self.grpc_port = logged_port
        self.metrics_port = values["metrics_port"]

    def log(self):
        with self.lock:
            return "\n".join(self.lines)

    def stop(self, sig=signal.SIGTERM, timeout_s=60):
        """Sends sig; returns the exit status, or None if it did not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            status = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        if self.drain_thread is not None:
            self.drain_thread.join(timeout=10)
        return status

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.drain_thread is not None:
            self.drain_thread.join(timeout=10)
        self.proc.stderr.close()


def parse_cli_test_args(argv):
    """The arguments of a CLI test: MISEG_CLI MISEG_SERVER [unittest args], the two binaries
    also from the MISEG_CLI and MISEG_SERVER environment variables. Returns (cli, server,
    unittest args) with absolute paths, or None after printing the usage."""
    rest = list(argv)
    positional = []
    while rest and len(positional) < 2 and not rest[0].startswith("-"):
        positional.append(rest.pop(0))
    cli = positional[0] if len(positional) > 0 else os.environ.get("MISEG_CLI")
    server = positional[1] if len(positional) > 1 else os.environ.get("MISEG_SERVER")
    if not cli or not server:
        sys.stderr.write("usage: %s MISEG_CLI MISEG_SERVER [unittest args]\n" % sys.argv[0])
        return None
    cli, server = os.path.abspath(cli), os.path.abspath(server)
    for binary in (cli, server):
        if not os.access(binary, os.X_OK):
            sys.stderr.write("not an executable: %s\n" % binary)
            return None
    return cli, server, rest


def run_tests(unittest_args, servers, title):
    """Runs this module's tests; when one fails, prints the log of every server started.
    Returns the exit status."""
    started = time.monotonic()
    program = unittest.main(argv=[sys.argv[0]] + unittest_args, exit=False)
    if not program.result.wasSuccessful():
        for server in servers:
            sys.stderr.write("\n===== %s log =====\n%s\n===== end of %s log =====\n"
                             % (server.name, server.log(), server.name))
    sys.stderr.write("%s: %.1fs\n" % (title, time.monotonic() - started))
    return 0 if program.result.wasSuccessful() else 1


def kill_servers(servers):
    """Kills every server a test started (best effort: at teardown, after failures too)."""
    for server in servers:
        try:
            server.kill()
        except Exception:  # pragma: no cover - best effort
            pass
