#!/usr/bin/python3
"""The `miseg` command line on a real terminal: runs `upload`, `train start --watch`,
`train watch` and every listing inside tmux panes of 80 and of 120 columns (a real
terminal emulator: what `capture-pane` returns is the screen a user sees) against a real
miseg-server that the test starts, and checks that

  - no screen line is longer than the terminal (capture-pane -J joins what the terminal
    wrapped, so a line that wrapped shows up longer than the width);
  - the progress bar redraws in place: the screen never holds more than one bar line while
    the job runs and exactly one when it ends, though the pane received many bar draws
    (counted in its raw output, recorded with pipe-pane);
  - the bar follows a resize (SIGWINCH) to a narrower window without leaving a remnant;
  - the shortened UIDs of the listings and of `upload` match exactly one real UID each
    (prefix before the ellipsis, suffix after it), compared to the `--json` output, and
    `--wide` prints them whole;
  - colour only where wanted (not with NO_COLOR, not with TERM=dumb), and the same commands
    piped print no escape code and no bar at all.

`deliveries list` needs a DICOM node, which this server does not run: its test is skipped,
saying so.

Run with Debian's interpreter:
  /usr/bin/python3 cli_screen_e2e_test.py BUILD/client/miseg BUILD/server/miseg-server [-v]
Needs tmux (deploy/install-deps.sh installs it).

Synchronisation never sleeps: each command waits in its pane on a FIFO until the output
recorder is attached, and the test polls the pane's screen (every 50 ms, with a generous
deadline) for the exit marker the pane's shell prints after the command.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from miseg_server_process import (  # noqa: E402
    ServerProcess, kill_servers, parse_cli_test_args, run_tests)

MISEG = None   # the CLI binary, set in main()
SERVER = None  # the server binary
TMUX = shutil.which("tmux")
ALL_SERVERS = []

CLASSES = "background,right_ventricle,myocardium,left_ventricle"
ELLIPSIS = "\u2026"
STARTUP_TIMEOUT_S = 60
CLI_TIMEOUT_S = 120
JOB_TIMEOUT_S = 400
POLL_S = 0.05
HEIGHT = 60  # rows: everything a command prints stays on the screen

# Fast training (about 50 steps a second on two cores) for long enough that the bar, drawn
# at most 10 times a second, redraws many times.
TRAIN = ["--grid-size", "32", "--widths", "8,16", "--labeled-batch", "2",
         "--unlabeled-batch", "2"]
STEPS = 400

# A progress bar line: "[====>   ]  36%" with or without a label before it.
BAR = re.compile(r"\[[=> ]*\] +\d+%")
EXIT = re.compile(r"^\[exit (\d+)\]$")


def display_width(text):
    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Cc", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def matching(short, values):
    """The values that a shortened form stands for: whole, or prefix ... suffix."""
    if ELLIPSIS not in short:
        return [v for v in values if v == short]
    prefix, suffix = short.split(ELLIPSIS)
    return [v for v in values
            if v.startswith(prefix) and v.endswith(suffix) and len(v) > len(prefix) + len(suffix)]


class Screen:
    """What a command left on a terminal: the lines of the screen (wrapped lines joined,
    trailing blanks dropped), the raw bytes the pane received, the exit status, and the
    largest number of bar lines seen at once while it ran."""

    def __init__(self, argv, width, lines, raw, rc, most_bars, seconds):
        self.argv, self.width, self.lines, self.raw = argv, width, lines, raw
        self.rc, self.most_bars, self.seconds = rc, most_bars, seconds

    def bar_lines(self):
        return [line for line in self.lines if BAR.search(line)]

    def describe(self):
        return "miseg %s at %d columns, exit %s; the screen:\n%s" % (
            " ".join(self.argv), self.width, self.rc, "\n".join(self.lines))


class CliScreenTest(unittest.TestCase):
    work_dir = None
    server = None

    @classmethod
    def setUpClass(cls):
        if TMUX is None:
            raise AssertionError("tmux is not installed (deploy/install-deps.sh installs it)")
        cls.work_dir = tempfile.mkdtemp(prefix="miseg-screen-")
        try:
            global MISEG, SERVER
            os.makedirs(os.path.join(cls.work_dir, "bin"))
            MISEG = shutil.copy2(MISEG, os.path.join(cls.work_dir, "bin", "miseg"))
            SERVER = shutil.copy2(SERVER, os.path.join(cls.work_dir, "bin", "miseg-server"))
            cls.server = ServerProcess(SERVER, os.path.join(cls.work_dir, "data"),
                                       os.path.join(cls.work_dir, "ready"), name="server")
            ALL_SERVERS.append(cls.server)
            cls.address = "127.0.0.1:%d" % cls.server.wait_until_serving(STARTUP_TIMEOUT_S)
            # Phantom studies, written once (piped; not what is under test here).
            studies = os.path.join(cls.work_dir, "studies")
            for role, count, labeled, first in (("labeled", 3, 3, 0), ("validation", 1, 1, 3),
                                                ("unlabeled", 4, 0, 4)):
                subprocess.run([MISEG, "phantom", os.path.join(studies, role), "--count",
                                str(count), "--labeled", str(labeled), "--first", str(first),
                                "--seed", "5", "--small"], check=True, timeout=CLI_TIMEOUT_S,
                               stdin=subprocess.DEVNULL, capture_output=True)
            cls.sessions = 0
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        kill_servers(ALL_SERVERS)
        if cls.work_dir:
            shutil.rmtree(cls.work_dir, ignore_errors=True)

    # ---- running the CLI piped and on a terminal -------------------------------------------

    def env(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("MISEG_") and k not in ("NO_COLOR", "TMUX", "TERM")}
        env["MISEG_ADDRESS"] = self.address
        env["LANG"] = "C.UTF-8"
        return env

    def piped(self, *args, timeout=CLI_TIMEOUT_S, extra_env=None):
        env = self.env()
        env.update(extra_env or {})
        proc = subprocess.run([MISEG] + [str(a) for a in args], env=env, cwd=self.work_dir,
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        out = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")
        self.assertEqual(proc.returncode, 0, "miseg %s: %r" % (" ".join(map(str, args)), out))
        return out

    def piped_json(self, *args):
        return json.loads(self.piped(*(args + ("--json",)))[0])

    def tmux(self, socket, *args, check=True):
        proc = subprocess.run([TMUX, "-S", socket, "-f", "/dev/null"] + list(args),
                              env=self.env(), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=30)
        if check:
            self.assertEqual(proc.returncode, 0, "tmux %s: %r" % (" ".join(args), proc.stderr))
        return proc.stdout.decode("utf-8", "replace")

    def capture(self, socket):
        text = self.tmux(socket, "capture-pane", "-p", "-J", "-S", "-", "-E", "-", "-t", "cli")
        lines = [line.rstrip() for line in text.split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def on_terminal(self, width, *args, env=None, timeout=CLI_TIMEOUT_S, during=None):
        """Runs `miseg ARGS` alone in a fresh tmux pane of `width` x HEIGHT and returns its
        Screen. during(socket, lines) is called at each poll while the command runs."""
        type(self).sessions += 1
        name = "s%d" % self.sessions
        socket = os.path.join(self.work_dir, name + ".sock")
        gate = os.path.join(self.work_dir, name + ".go")
        raw_path = os.path.join(self.work_dir, name + ".raw")
        os.mkfifo(gate)
        argv = [str(a) for a in args]
        assignments = ["%s=%s" % kv for kv in (env or {}).items()]
        # The pane waits on the FIFO until pipe-pane records its output, runs the command,
        # prints the exit marker and stays open for capture-pane.
        script = ('read _ < "$1"; shift; env "$@"; echo "[exit $?]"; exec sleep 3600')
        command = " ".join(_quote(w) for w in
                           ["sh", "-c", script, "sh", gate] + assignments + [MISEG] + argv)
        self.tmux(socket, "new-session", "-d", "-s", "cli", "-x", str(width), "-y",
                  str(HEIGHT), "-c", self.work_dir, command)
        try:
            self.tmux(socket, "set-option", "-t", "cli", "history-limit", "10000")
            self.tmux(socket, "pipe-pane", "-t", "cli", "cat > " + _quote(raw_path))
            with open(gate, "w") as f:
                f.write("go\n")
            started = time.monotonic()
            deadline = started + timeout
            most_bars, rc = 0, None
            while rc is None:
                self.assertLess(time.monotonic(), deadline,
                                "miseg %s did not end within %ds:\n%s"
                                % (" ".join(argv), timeout, "\n".join(self.capture(socket))))
                lines = self.capture(socket)
                most_bars = max(most_bars, len([l for l in lines if BAR.search(l)]))
                for line in lines:
                    m = EXIT.match(line)
                    if m:
                        rc = int(m.group(1))
                if rc is None:
                    if during:
                        during(socket, lines)
                    time.sleep(POLL_S)  # polling the screen, not waiting for an event
            seconds = time.monotonic() - started
            lines = [l for l in self.capture(socket) if not EXIT.match(l)]
            # The recorder has everything once the marker has gone through it too.
            while True:
                with open(raw_path, "rb") as f:
                    raw = f.read()
                if b"[exit " in raw:
                    break
                self.assertLess(time.monotonic(), deadline, "pipe-pane lost the output")
                time.sleep(POLL_S)
        finally:
            self.tmux(socket, "kill-server", check=False)
        raw = raw[:raw.rfind(b"[exit ")]
        return Screen(argv, width, lines, raw, rc, most_bars, seconds)

    # ---- checks ---------------------------------------------------------------------------

    def assert_fits(self, screen, width=None):
        width = width or screen.width
        for line in screen.lines:
            self.assertLessEqual(display_width(line), width,
                                 "a line of %d columns:\n%s\n%s"
                                 % (display_width(line), line, screen.describe()))

    def assert_ok(self, screen):
        self.assertEqual(screen.rc, 0, screen.describe())

    def assert_shortened_uids(self, shorts, real, screen):
        """Every short form stands for exactly one real UID; together they are all of them."""
        found = set()
        for short in shorts:
            m = matching(short, real)
            self.assertEqual(len(m), 1, "%r matches %r\n%s" % (short, m, screen.describe()))
            found.add(m[0])
        self.assertEqual(found, set(real), screen.describe())

    # ---- the session at one width -----------------------------------------------------------

    def session_at(self, width):
        dataset = "screen-%d" % width
        self.piped("datasets", "create", dataset, "--classes", CLASSES)
        studies = os.path.join(self.work_dir, "studies")

        # upload: stored lines with shortened series UIDs, one bar left at the end.
        for role in ("labeled", "validation", "unlabeled"):
            screen = self.on_terminal(width, "upload", dataset, os.path.join(studies, role),
                                      "--role", role)
            self.assert_ok(screen)
            self.assert_fits(screen)
            self.assertEqual(len(screen.bar_lines()), 1, screen.describe())
            self.assertTrue(screen.bar_lines()[0].startswith("upload ["), screen.describe())
            self.assertLessEqual(screen.most_bars, 1, screen.describe())
            stored = [l.split()[1] for l in screen.lines if l.startswith("stored ")]
            self.assertEqual(len(stored), {"labeled": 3, "validation": 1, "unlabeled": 4}[role],
                             screen.describe())
            role_uids = [s["seriesInstanceUid"] for s in
                         self.piped_json("studies", "list", dataset, "--role", role)["studies"]]
            self.assert_shortened_uids(stored, role_uids, screen)
            self.assertTrue(all(ELLIPSIS in s for s in stored), screen.describe())
        self.assertIn(b"\x1b[K", screen.raw)  # the bar is erased with an escape here

        # train start --watch: many bar draws, one bar line on the screen.
        screen = self.on_terminal(width, "train", "start", dataset, "--steps", STEPS,
                                  "--validate-every", STEPS // 2, *TRAIN, "--watch",
                                  timeout=JOB_TIMEOUT_S)
        self.assert_ok(screen)
        self.assert_fits(screen)
        job_id = self.check_watch_screen(screen)
        self.assertTrue(re.match(r"job %d queued: %d steps on %s$" % (job_id, STEPS, dataset),
                                 screen.lines[0]), screen.describe())
        # Only one "queued" line: the watch does not repeat what `start` said.
        self.assertEqual(len([l for l in screen.lines if " queued" in l]), 1, screen.describe())

        # train watch of the finished job: the replay, the same way.
        screen = self.on_terminal(width, "train", "watch", job_id, timeout=JOB_TIMEOUT_S)
        self.assert_ok(screen)
        self.assert_fits(screen)
        self.assertEqual(self.check_watch_screen(screen, replay=True), job_id)

        # The listings.
        real = [s["seriesInstanceUid"] for s in
                self.piped_json("studies", "list", dataset)["studies"]]
        screen = self.on_terminal(width, "studies", "list", dataset)
        self.assert_ok(screen)
        self.assert_fits(screen)
        self.assertEqual(screen.lines[0].split(), ["SERIES", "ROLE", "MOD", "SLICES", "MATRIX",
                                                   "SEG", "PRIORITY", "DESCRIPTION"],
                         screen.describe())
        rows = screen.lines[1:]
        self.assertEqual(len(rows), len(real), screen.describe())
        self.assert_shortened_uids([r.split()[0] for r in rows], real, screen)
        wide = self.on_terminal(width, "studies", "list", dataset, "-o", "wide")
        self.assert_ok(wide)
        self.assertEqual(sorted(r.split()[0] for r in wide.lines[1:]), sorted(real),
                         wide.describe())

        screens = {}
        for args, header in ((("datasets", "list"), "NAME"), (("train", "list", dataset), "ID"),
                             (("models", "list", dataset), "ID")):
            screen = screens[args[0]] = self.on_terminal(width, *args)
            self.assert_ok(screen)
            self.assert_fits(screen)
            self.assertEqual(screen.lines[0].split()[0], header, screen.describe())
            self.assertGreaterEqual(len(screen.lines), 2, screen.describe())
        datasets, jobs, models = screens["datasets"], screens["train"], screens["models"]
        self.assertTrue(any(l.split()[:2] == [dataset, "MR"] for l in datasets.lines[1:]),
                        datasets.describe())
        self.assertEqual([l.split()[:4] for l in jobs.lines[1:]],
                         [[str(job_id), dataset, "succeeded", "%d/%d" % (STEPS, STEPS)]],
                         jobs.describe())
        self.assertTrue(jobs.lines[1].endswith(" ago") or jobs.lines[1].endswith("just now"),
                        jobs.describe())
        self.assertEqual(len(models.lines), 2, models.describe())
        self.assertEqual(models.lines[1].split()[1:3], [dataset, "1"], models.describe())

    def check_watch_screen(self, screen, replay=False):
        """The screen of a watched job: state lines, the validation lines above the bar,
        exactly one bar line (drawn many times), the final state last. Returns the job id."""
        bars = screen.bar_lines()
        self.assertEqual(len(bars), 1, screen.describe())
        self.assertLessEqual(screen.most_bars, 1, screen.describe())
        m = re.match(r"job (\d+) \[=+\] 100%  step (\d+)/(\d+)", bars[0])
        self.assertTrue(m, screen.describe())
        job_id = int(m.group(1))
        self.assertEqual((int(m.group(2)), int(m.group(3))), (STEPS, STEPS), screen.describe())
        draws = screen.raw.count(b"\x1b[Kjob %d [" % job_id)
        if not replay:
            # Drawn often, not once at the end: the bar redraws at most 10 times a second
            # while steps arrive (about 8 s of training here on two cores; a faster machine
            # trains sooner, so the count asked for follows the time the job took).
            wanted = max(3, min(10, int(screen.seconds * 10 / 2)))
            self.assertGreaterEqual(draws, wanted, "%d draws in %.1f s\n%s"
                                    % (draws, screen.seconds, screen.describe()))
        else:
            self.assertGreaterEqual(draws, 1, screen.describe())
        # The bar sits above the final state, the validation lines above the bar.
        index = screen.lines.index(bars[0])
        self.assertEqual(screen.lines[-1], "job %d succeeded: model %s (version 1)"
                         % (job_id, screen.lines[-1].split()[4]), screen.describe())
        self.assertEqual(index, len(screen.lines) - 2, screen.describe())
        dice = [l for l in screen.lines if "validation Dice" in l]
        self.assertEqual(len(dice), 2, screen.describe())
        self.assertTrue(all(screen.lines.index(l) < index for l in dice), screen.describe())
        self.assertTrue(any(l.startswith("job %d running: started on local/cpu" % job_id)
                            for l in screen.lines), screen.describe())
        return job_id

    def test_80_columns(self):
        self.session_at(80)

    def test_120_columns(self):
        self.session_at(120)

    # ---- a resize while the bar runs -----------------------------------------------------

    def test_bar_follows_a_resize(self):
        dataset = "screen-resize"
        self.piped("datasets", "create", dataset, "--classes", CLASSES)
        self.piped("upload", dataset, os.path.join(self.work_dir, "studies", "labeled"),
                   "--role", "labeled")
        self.piped("upload", dataset, os.path.join(self.work_dir, "studies", "unlabeled"),
                   "--role", "unlabeled")
        steps = 600
        resized = {}

        def shrink_once_running(socket, lines):
            # Once the bar shows, wide, before the validation at half-way: to 60 columns.
            if resized:
                return
            for line in lines:
                m = re.search(r"step (\d+)/%d" % steps, line)
                if BAR.search(line) and m and int(m.group(1)) < steps // 2 - 50:
                    self.tmux(socket, "resize-window", "-t", "cli", "-x", "60")
                    resized["at_step"] = int(m.group(1))
                    resized["line"] = line
                    return

        screen = self.on_terminal(120, "train", "start", dataset, "--steps", steps,
                                  "--validate-every", steps // 2, *TRAIN, "--watch",
                                  timeout=JOB_TIMEOUT_S, during=shrink_once_running)
        self.assert_ok(screen)
        self.assertTrue(resized, "the bar never showed before step %d:\n%s"
                        % (steps // 2 - 50, screen.describe()))
        self.assertGreater(display_width(resized["line"]), 60, resized)  # it had to shrink
        # After the resize: one bar, narrower than 60 columns, and every line printed since
        # (the validation Dice, wrapped; the final state) fits 60 columns.
        bars = screen.bar_lines()
        self.assertEqual(len(bars), 1, screen.describe())
        self.assertLess(display_width(bars[0]), 60, screen.describe())
        since = [i for i, l in enumerate(screen.lines) if l.startswith("step %d " % (steps // 2))]
        self.assertEqual(len(since), 1, screen.describe())
        for line in screen.lines[since[0]:]:
            self.assertLessEqual(display_width(line), 60, screen.describe())
        # No remnant of the wide bar: nothing else on the screen looks like a piece of it.
        for line in screen.lines:
            if line not in bars:
                self.assertNotIn("steps/s", line, screen.describe())
                self.assertNotIn("[=", line, screen.describe())

    # ---- colour ----------------------------------------------------------------------------

    def test_colour_only_where_wanted(self):
        dataset = "screen-colour"
        self.piped("datasets", "create", dataset, "--classes", CLASSES)
        self.piped("upload", dataset, os.path.join(self.work_dir, "studies", "labeled"),
                   "--role", "labeled")
        self.piped("train", "start", dataset, "--steps", 5, *TRAIN, "--watch",
                   timeout=JOB_TIMEOUT_S)
        # A terminal that takes colour: the succeeded state is green.
        screen = self.on_terminal(80, "train", "list", dataset)
        self.assert_ok(screen)
        self.assertIn(b"\x1b[32msucceeded", screen.raw)
        # NO_COLOR set (any non-empty value), or a dumb terminal: no colour at all.
        for env in ({"NO_COLOR": "1"}, {"NO_COLOR": "yes"}, {"TERM": "dumb"}):
            screen = self.on_terminal(80, "train", "list", dataset, env=env)
            self.assert_ok(screen)
            self.assertNotIn(b"\x1b[", screen.raw, env)

    def test_dumb_terminal_gets_a_bar_without_escape_codes(self):
        dataset = "screen-dumb"
        self.piped("datasets", "create", dataset, "--classes", CLASSES)
        self.piped("upload", dataset, os.path.join(self.work_dir, "studies", "labeled"),
                   "--role", "labeled")
        screen = self.on_terminal(80, "train", "start", dataset, "--steps", 100, *TRAIN,
                                  "--watch", env={"TERM": "dumb"}, timeout=JOB_TIMEOUT_S)
        self.assert_ok(screen)
        self.assert_fits(screen)
        self.assertNotIn(b"\x1b", screen.raw)
        self.assertEqual(len(screen.bar_lines()), 1, screen.describe())

    # ---- piped -----------------------------------------------------------------------------

    def test_piped_prints_no_escape_codes_and_no_bar(self):
        dataset = "screen-piped"
        self.piped("datasets", "create", dataset, "--classes", CLASSES)
        outputs = []
        for role in ("labeled", "validation", "unlabeled"):
            outputs.append(self.piped("upload", dataset,
                                      os.path.join(self.work_dir, "studies", role),
                                      "--role", role))
        out, err = self.piped("train", "start", dataset, "--steps", 100, *TRAIN, "--watch",
                              timeout=JOB_TIMEOUT_S)
        outputs.append((out, err))
        self.assertTrue(any(l.startswith("step 100/100 ") for l in out.splitlines()), out)
        for args in (("datasets", "list"), ("studies", "list", dataset), ("train", "list"),
                     ("models", "list"), ("train", "watch", out.split()[1])):
            outputs.append(self.piped(*args, timeout=JOB_TIMEOUT_S))
        for stdout, stderr in outputs:
            for text in (stdout, stderr):
                self.assertNotIn("\x1b", text)
                self.assertNotIn("\r", text)
                self.assertIsNone(BAR.search(text), text)
        # The shortened UIDs when piped are the same as on a terminal; --json is complete.
        real = [s["seriesInstanceUid"] for s in
                self.piped_json("studies", "list", dataset)["studies"]]
        rows = self.piped("studies", "list", dataset)[0].splitlines()[1:]
        self.assert_shortened_uids([r.split()[0] for r in rows], real,
                                   Screen([], 0, rows, b"", 0, 0, 0.0))
        rows = self.piped("studies", "list", dataset, "--wide")[0].splitlines()[1:]
        self.assertEqual(sorted(r.split()[0] for r in rows), sorted(real))

    def test_deliveries_list_needs_a_dicom_node(self):
        env = self.env()
        proc = subprocess.run([MISEG, "deliveries", "list"], env=env, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT_S)
        self.assertEqual(proc.returncode, 3, proc.stderr)
        self.assertIn(b"FAILED_PRECONDITION", proc.stderr)
        self.skipTest("deliveries list needs a server with a DICOM node; this one has none "
                      "(its table is covered by the layout unit tests)")


def _quote(word):
    return "'" + word.replace("'", "'\\''") + "'"


def main():
    global MISEG, SERVER
    parsed = parse_cli_test_args(sys.argv[1:])
    if parsed is None:
        return 2
    MISEG, SERVER, rest = parsed
    return run_tests(rest, ALL_SERVERS, "miseg screen test")


if __name__ == "__main__":
    sys.exit(main())
