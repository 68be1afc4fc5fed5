#!/usr/bin/env python3
"""Desktop-client benchmark: the real terminal app (``dhtchat ui``) in a tmux pane of 80x24,
with real daemons on a loopback DHT.

Usage::

    python benchmarks/ui.py                         # defaults: a few minutes on 2 cores
    python benchmarks/ui.py --messages 1000 --starts 1 --keys 20 --idle 10
    python benchmarks/ui.py --screenshots docs/images   # only the SVG screenshots

Set-up: a DHT of ``--dht-nodes`` nodes, the user's daemon (Alice) and a contact's (Bob), who
sends Alice ``--messages`` messages (``message.send_batch``). Then, every time measured with
``time.perf_counter`` in this process, the screen read with ``tmux capture-pane`` polled in a
tight loop (each poll is a ``tmux`` client process: its own cost is measured and printed):

1. **Start, daemon already running** (``--starts`` times): from the Enter that runs
   ``dhtchat --profile ALICE ui`` in the pane's shell (a new Python process) to the
   conversations list on screen with Bob's row and the footer;
2. **Opening the conversation** of ``--messages`` messages (each start): from Enter on Bob's
   row to the newest message on screen;
3. **Key-to-screen latency** (``--keys`` keystrokes in the compose box, typing and
   backspacing): from ``tmux send-keys`` of one key to ``capture-pane`` showing the box's new
   content; an upper bound (it includes one send-keys and at least one capture-pane process);
4. **Idle CPU** of the UI process (``--idle`` seconds each, on the open conversation and on
   the conversations list): utime + stime from ``/proc/PID/stat``, as CPU seconds per minute;
5. **Start, daemon started by the UI** (``--starts`` times; Bob's daemon is stopped first so
   the new daemon has no one to connect to): Alice's daemon stopped, ``dhtchat ui --host H
   --bootstrap ...`` shows the unlock screen (time from Enter in the shell), then from the
   Enter after the passphrase (the key derivation, the daemon's start, its DHT join, the
   client's connection and first load) to the conversations list.

``--screenshots DIR`` instead saves SVG screenshots (Textual's ``save_screenshot``, in
``App.run_test`` at 80x24) of the first-run, conversations, conversation and requests
screens, with three real daemons, into ``DIR/ui-*.svg``.

Every process the script starts is stopped at the end (also on errors); ``--json OUT``
writes every number.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import libtmux  # noqa: E402

from dhtchat.app.rpc import RpcClient, call  # noqa: E402
from dhtchat.ui.client import UiClient, socket_path  # noqa: E402
from tests.daemons import (  # noqa: E402
    PASSPHRASE,
    DaemonProcess,
    DhtProcess,
    cli,
    new_identity,
    next_host,
)

WIDTH, HEIGHT = 80, 24
BOX = "▊▎▔▁ "  # the compose box's border characters, stripped from its lines
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    """p50 / p95 / max / mean of ``values`` (seconds)."""
    return {"n": len(values), "p50": percentile(values, 0.5), "p95": percentile(values, 0.95),
            "max": max(values), "mean": statistics.fmean(values)}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# ---------------------------------------------------------------------------- the terminal


class Terminal:
    """A tmux server of its own with one 80x24 pane; a command typed in its shell becomes the
    pane's process (``exec``), so its pid is the pane's."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server = libtmux.Server(socket_name=name)
        session = self.server.new_session(session_name="ui", x=WIDTH, y=HEIGHT,
                                          start_directory=str(ROOT),
                                          window_command="exec sh")
        self.pane = session.active_window.active_pane
        self.target = str(self.pane.pane_id)
        self.pid = int(str(self.pane.pane_pid))

    def text(self) -> str:
        """What the pane shows now."""
        return subprocess.run(["tmux", "-L", self.name, "capture-pane", "-p", "-t",
                               self.target], capture_output=True, text=True,
                              check=False).stdout

    def keys(self, *keys: str, literal: bool = False) -> None:
        """``tmux send-keys`` (``-l``: the text as it is)."""
        subprocess.run(["tmux", "-L", self.name, "send-keys", "-t", self.target,
                        *(["-l"] if literal else []), *keys], check=True)

    def run(self, argv: list[str], env: dict[str, str]) -> float:
        """Type ``exec env ... ARGV`` and Enter in the shell; returns the time of the Enter."""
        line = " ".join(shlex.quote(a) for a in ["exec", "env", "-u", "DHTCHAT_PASSPHRASE",
                                                 "-u", "CI", *(f"{k}={v}" for k, v in
                                                               env.items()), *argv])
        self.keys(line, literal=True)
        started = time.perf_counter()
        self.keys("Enter")
        return started

    def wait(self, check: Callable[[str], bool], timeout: float, what: str) -> float:
        """Poll the screen until ``check(text)``; the time it first held."""
        deadline = time.perf_counter() + timeout
        text = ""
        while time.perf_counter() < deadline:
            text = self.text()
            if check(text):
                return time.perf_counter()
        raise TimeoutError(f"{what}: not on screen within {timeout:.0f} s; it shows:\n{text}")

    def alive(self) -> bool:
        """Whether the pane's process still runs."""
        return Path(f"/proc/{self.pid}").exists()

    def close(self) -> None:
        """Kill the tmux server (and whatever still runs in it)."""
        with contextlib.suppress(Exception):
            self.server.kill()


def compose_text(screen: str) -> str | None:
    """The compose box's content (its lines joined), None when it is not on screen."""
    lines = screen.splitlines()
    top = max((i for i, line in enumerate(lines) if line.startswith("▊▔")), default=None)
    if top is None:
        return None
    inner = []
    for line in lines[top + 1:]:
        if line.startswith("▊▁"):
            return "".join(inner)
        inner.append(line.strip(BOX))
    return None


def listed(screen: str, name: str) -> bool:
    """The conversations list with ``name``'s row and its footer."""
    return name in screen and "Requests" in screen and "My id" in screen


# ---------------------------------------------------------------------------- the daemons


class Setup:
    """The DHT, Alice (the user) and Bob (her contact, who wrote her ``messages``)."""

    def __init__(self, root: Path, dht_nodes: int) -> None:
        self.root = root
        self.dht = DhtProcess(dht_nodes)
        self.alice_profile, self.bob_profile = root / "alice", root / "bob"
        self.alice_id = new_identity(self.alice_profile)
        self.bob_id = new_identity(self.bob_profile)
        self.alice: DaemonProcess | None = self.daemon(self.alice_profile, "Alice")
        self.bob: DaemonProcess | None = self.daemon(self.bob_profile, "Bob")
        self.alice.wait_ready()
        self.bob.wait_ready()
        cli(self.alice_profile, "contact", "request", self.bob_id, "--message", "hi Bob")
        self.bob.wait_contact(self.alice_id, lambda r: r["state"] == "incoming")
        cli(self.bob_profile, "contact", "accept", self.alice_id, "--name", "Alice")
        self.alice.wait_contact(self.bob_id, lambda r: r["state"] == "accepted"
                                and r["name"] == "Bob")  # the name he chose

    def daemon(self, profile: Path, name: str) -> DaemonProcess:
        args = ["--port", "0", "--host", next_host(), "--ice-address", "127.0.0.1",
                "--name", name]
        for address in self.dht.bootstrap:
            args += ["--bootstrap", address]
        return DaemonProcess(profile, args)

    def stop(self) -> None:
        for daemon in (self.alice, self.bob):
            if daemon is not None:
                with contextlib.suppress(Exception):
                    daemon.stop()
        with contextlib.suppress(Exception):
            self.dht.stop()


async def send_many(profile: Path, to: str, count: int) -> None:
    """``count`` messages ``message 0`` ... through ``message.send_batch``."""
    client = await RpcClient.open(profile / "daemon.sock")
    try:
        for start in range(0, count, 1000):
            batch = [{"to": to, "text": f"message {n}"}
                     for n in range(start, min(count, start + 1000))]
            await client.call("message.send_batch", {"messages": batch}, 120.0)
    finally:
        await client.close()


async def history_count(profile: Path, contact: str, limit: int) -> int:
    """How many messages of the conversation are stored (the client's connection: its
    reply lines may be long)."""
    client = UiClient(socket_path(profile))
    await client.connect()
    try:
        return len(await client.history(contact, limit))
    finally:
        await client.close()


def ui_env() -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}


def ui_argv(profile: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dhtchat", "--profile", str(profile), "ui", *extra]


# ---------------------------------------------------------------------------- measurements


def import_time(samples: int = 3) -> float:
    """Median wall time of a Python process that only imports the CLI and the client (the
    part of a start before anything is drawn or asked of the daemon)."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import dhtchat.cli, dhtchat.ui.app"],
                       check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def tmux_costs(term: Terminal, samples: int = 20) -> dict[str, float]:
    """What one capture-pane and one send-keys (of nothing) cost: the floor of 2-4."""
    captures, sends = [], []
    for _ in range(samples):
        t0 = time.perf_counter()
        term.text()
        captures.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run(["tmux", "-L", term.name, "display-message", "-p", "-t", term.target,
                        "x"], capture_output=True, check=True)
        sends.append(time.perf_counter() - t0)
    return {"capture_pane_p50": percentile(captures, 0.5),
            "client_call_p50": percentile(sends, 0.5)}


def key_latency(term: Terminal, keys: int) -> list[float]:
    """``keys`` keystrokes into the compose box (30 letters typed, then backspaced, ...)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123"
    typed, samples, forward = "", [], True
    empty = compose_text(term.text())  # the empty box (it may show a placeholder)
    for _ in range(keys):
        if forward:
            key, literal = alphabet[len(typed)], True
            typed += key
        else:
            key, literal = "BSpace", False
            typed = typed[:-1]
        started = time.perf_counter()
        term.keys(key, literal=literal)
        seen = term.wait(lambda t, want=typed: compose_text(t) == (want or empty), 10,
                         f"the compose box showing {typed!r}")
        samples.append(seen - started)
        if (forward and len(typed) == len(alphabet)) or (not forward and not typed):
            forward = not forward
    for _ in range(len(typed)):  # leave the box empty
        term.keys("BSpace")
    term.wait(lambda t: compose_text(t) == empty, 10, "the empty compose box")
    return samples


def idle_cpu(pid: int, seconds: float) -> float:
    """CPU seconds per minute of ``pid`` over ``seconds`` of doing nothing."""
    start_cpu, started = cpu_seconds(pid), time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:  # (no input: just wait out the window)
        time.sleep(min(1.0, max(0.0, deadline - time.perf_counter())))
    return (cpu_seconds(pid) - start_cpu) / (time.perf_counter() - started) * 60.0


def wait_gone(term: Terminal, timeout: float, what: str) -> None:
    deadline = time.perf_counter() + timeout
    while term.alive():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what} did not exit within {timeout:.0f} s:\n{term.text()}")
        time.sleep(0.05)


def bench_running(setup: Setup, options: argparse.Namespace, index: int,
                  results: dict[str, Any]) -> None:
    """One start of the client on the running daemon (and, the last time, keys and CPU)."""
    newest = f"message {options.messages - 1}"
    term = Terminal(f"dhtchat-bench-ui-{os.getpid()}-{index}")
    try:
        if index == 0:
            results["tmux"] = tmux_costs(term)
        started = term.run(ui_argv(setup.alice_profile), ui_env())
        shown = term.wait(lambda t: listed(t, "Bob"), 60, "the conversations list")
        results["start_running"].append(shown - started)
        t0 = time.perf_counter()
        term.keys("Enter")
        opened = term.wait(lambda t: newest in t and compose_text(t) is not None, 60,
                           f"the newest of {options.messages} messages")
        results["open"].append(opened - t0)
        log(f"  start {index + 1}: list after {(shown - started) * 1000:.0f} ms, "
            f"conversation opened in {(opened - t0) * 1000:.0f} ms")
        if index == options.starts - 1:
            if options.keys:
                results["keys"] = key_latency(term, options.keys)
            if options.idle:
                results["idle_conversation"] = idle_cpu(term.pid, options.idle)
                term.keys("Escape")
                term.wait(lambda t: listed(t, "Bob"), 10, "the conversations list")
                results["idle_list"] = idle_cpu(term.pid, options.idle)
        term.keys("C-q")
        wait_gone(term, 30, "the client")
    finally:
        term.close()


def bench_started_by_ui(setup: Setup, index: int, results: dict[str, Any]) -> None:
    """One start of the client that starts Alice's daemon (unlock, then the list)."""
    term = Terminal(f"dhtchat-bench-ui-start-{os.getpid()}-{index}")
    sock = setup.alice_profile / "daemon.sock"
    try:
        argv = ui_argv(setup.alice_profile, "--host", next_host(),
                       "--bootstrap", *setup.dht.bootstrap)
        started = term.run(argv, ui_env())
        unlock = term.wait(lambda t: "Unlock your identity" in t, 60, "the unlock screen")
        term.keys(PASSPHRASE, literal=True)
        term.wait(lambda t: "•" * len(PASSPHRASE) in t, 10, "the passphrase typed")
        t0 = time.perf_counter()
        term.keys("Enter")
        shown = term.wait(lambda t: listed(t, "Bob"), 120, "the conversations list")
        results["start_by_ui_unlock_screen"].append(unlock - started)
        results["start_by_ui_after_passphrase"].append(shown - t0)
        log(f"  start {index + 1}: unlock screen after {(unlock - started) * 1000:.0f} ms, "
            f"list {(shown - t0) * 1000:.0f} ms after the passphrase")
        term.keys("C-q")
        term.wait(lambda t: "stop the daemon and quit" in t, 10, "the quit question")
        term.keys("s")
        wait_gone(term, 60, "the client")
        deadline = time.perf_counter() + 30
        while sock.exists():
            if time.perf_counter() > deadline:
                raise TimeoutError("the daemon the client started did not stop")
            time.sleep(0.1)
    finally:
        term.close()
        if sock.exists():  # after a failure: the daemon the client started
            with contextlib.suppress(Exception):
                asyncio.run(call(sock, "shutdown", {}, 10.0))


def run(options: argparse.Namespace, root: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "config": {k: str(v) for k, v in vars(options).items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_average": os.getloadavg()},
        "start_running": [], "open": [], "start_by_ui_unlock_screen": [],
        "start_by_ui_after_passphrase": [],
    }
    compileall.compile_dir(str(ROOT / "dhtchat"), quiet=1)  # as an installed package is
    results["import_ui"] = import_time()
    log(f"starting a {options.dht_nodes}-node DHT and two daemons")
    setup = Setup(root, options.dht_nodes)
    try:
        assert setup.bob is not None and setup.alice is not None
        log(f"Bob sends Alice {options.messages} messages")
        asyncio.run(send_many(setup.bob_profile, setup.alice_id, options.messages))
        deadline = time.monotonic() + 600
        while asyncio.run(history_count(setup.alice_profile, setup.bob_id,
                                        options.messages)) < options.messages:
            if time.monotonic() > deadline:
                raise TimeoutError("the messages did not all arrive")
            time.sleep(0.5)
        log("the client on the running daemon")
        for index in range(options.starts):
            bench_running(setup, options, index, results)
        log("the client starting the daemon (Bob's and Alice's daemons stopped first)")
        setup.bob.stop()
        setup.bob = None
        setup.alice.stop()
        setup.alice = None
        for index in range(options.starts):
            bench_started_by_ui(setup, index, results)
    except BaseException:
        for daemon in (setup.alice, setup.bob):
            if daemon is not None:
                log(f"--- {daemon.profile.name} log tail ---\n{daemon.log()[-3000:]}")
        ui_log = setup.alice_profile / "daemon.log"
        if ui_log.exists():
            log(f"--- alice's daemon log (started by the client) ---\n"
                f"{ui_log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        setup.stop()
    return results


def ms(value: float) -> str:
    return f"{value * 1000:.0f} ms"


def report(results: dict[str, Any], options: argparse.Namespace) -> None:
    tmux = results.get("tmux", {})
    print(f"tmux: one capture-pane {ms(tmux.get('capture_pane_p50', 0))}, one client call "
          f"{ms(tmux.get('client_call_p50', 0))} (p50; part of every time below)")
    if "import_ui" in results:
        print(f"python -c 'import dhtchat.cli, dhtchat.ui.app': {ms(results['import_ui'])} "
              "(median of 3; part of every start)")
    for key, label in (("start_running", "start to the conversations list, daemon running"),
                       ("start_by_ui_unlock_screen", "start to the unlock screen, no daemon"),
                       ("start_by_ui_after_passphrase",
                        "passphrase Enter to the list, daemon started by the UI"),
                       ("open", f"open a {options.messages}-message conversation")):
        values = results.get(key) or []
        if values:
            s = summary(values)
            print(f"{label}: p50 {ms(s['p50'])}, max {ms(s['max'])} ({s['n']} runs)")
    keys = results.get("keys") or []
    if keys:
        s = summary(keys)
        print(f"key to screen (tmux send-keys to capture-pane): p50 {ms(s['p50'])}, "
              f"p95 {ms(s['p95'])}, max {ms(s['max'])} ({s['n']} keys; target 50 ms)")
    for key, label in (("idle_conversation", "an open conversation"),
                       ("idle_list", "the conversations list")):
        if key in results:
            print(f"idle CPU, {label}: {results[key]:.2f} CPU-s per minute "
                  f"({options.idle:g} s measured)")


# ---------------------------------------------------------------------------- screenshots


def screenshots(out: Path, root: Path, dht_nodes: int) -> list[Path]:
    """SVGs of the main screens at 80x24 (real daemons; the app in ``run_test``)."""
    from dhtchat.ui.app import DhtchatApp  # noqa: PLC0415
    from dhtchat.ui.screens.conversation import ConversationScreen  # noqa: PLC0415
    from dhtchat.ui.screens.conversations import ConversationsScreen  # noqa: PLC0415
    from dhtchat.ui.screens.firstrun import FirstRunScreen  # noqa: PLC0415
    from tests.test_ui_support import screen_text, until  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    dht = DhtProcess(dht_nodes)
    daemons: list[DaemonProcess] = []

    def start(name: str) -> tuple[DaemonProcess, str]:
        profile = root / name.lower()
        user_id = new_identity(profile)
        args = ["--port", "0", "--host", next_host(), "--ice-address", "127.0.0.1",
                "--name", name]
        for address in dht.bootstrap:
            args += ["--bootstrap", address]
        daemon = DaemonProcess(profile, args)
        daemons.append(daemon)
        daemon.wait_ready()
        return daemon, user_id

    try:
        alice, alice_id = start("Alice")
        bob, bob_id = start("Bob")
        carol, _ = start("Carol")
        cli(alice.profile, "contact", "request", bob_id, "--message", "hi Bob, it's Alice")
        bob.wait_contact(alice_id, lambda r: r["state"] == "incoming")
        cli(bob.profile, "contact", "accept", alice_id, "--name", "Alice")
        alice.wait_contact(bob_id, lambda r: r["state"] == "accepted")
        cli(carol.profile, "contact", "request", alice_id,
            "--message", "Hello Alice, we met at the workshop on Tuesday.")
        for who, to, text in (
                (alice, bob_id, "Are we still on for the library at 3?"),
                (bob, alice_id, "Yes. I'll bring the printed notes."),
                (alice, bob_id, "Great, see you there.")):
            cli(who.profile, "send", to, text, "--wait", "--timeout", "60")
        cli(bob.profile, "receive")  # Bob reads them: Alice's last one gets its ✓✓
        deadline = time.monotonic() + 60
        while True:  # Carol's request has arrived, Bob read Alice's last message
            pending = cli(alice.profile, "contact", "list", "--json").stdout
            rows = json.loads(pending)
            history = cli(alice.profile, "history", bob_id, "--json").stdout
            read = [json.loads(line) for line in history.splitlines() if line.strip()]
            if any(r["state"] == "incoming" for r in rows) and read and read[-1].get("read"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the screenshots' conversation did not settle: {rows} "
                                   f"{read[-1:]}")
            time.sleep(0.3)

        async def main_screens() -> None:
            app = DhtchatApp(alice.profile)
            async with app.run_test(size=(WIDTH, HEIGHT)) as pilot:
                await until(pilot, lambda: isinstance(app.screen, ConversationsScreen)
                            and "Bob" in screen_text(app), 30, "the conversations")
                await pilot.pause(0.3)
                saved.append(Path(app.save_screenshot("ui-conversations.svg", str(out))))
                await pilot.press("enter")
                await until(pilot, lambda: isinstance(app.screen, ConversationScreen)
                            and "see you there" in screen_text(app), 15, "the conversation")
                await pilot.press(*"On my way")
                await pilot.pause(0.3)
                saved.append(Path(app.save_screenshot("ui-conversation.svg", str(out))))
                await pilot.press("escape")
                await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 10,
                            "back")
                await pilot.press("r")
                await until(pilot, lambda: "workshop" in screen_text(app), 10, "requests")
                await pilot.pause(0.3)
                saved.append(Path(app.save_screenshot("ui-requests.svg", str(out))))
                app.exit(0)

        async def first_run() -> None:
            app = DhtchatApp(root / "newcomer")
            async with app.run_test(size=(WIDTH, HEIGHT)) as pilot:
                await until(pilot, lambda: isinstance(app.screen, FirstRunScreen), 30,
                            "the first-run screen")
                await pilot.press(*"maple orbit lantern")
                await until(pilot, lambda: "Strength: █" in screen_text(app), 10,
                            "the strength feedback")
                saved.append(Path(app.save_screenshot("ui-first-run.svg", str(out))))
                app.exit(0)

        asyncio.run(main_screens())
        asyncio.run(first_run())
    finally:
        for daemon in daemons:
            with contextlib.suppress(Exception):
                daemon.stop()
        dht.stop()
    return saved


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)

    def bounded(low: int, high: int) -> Callable[[str], int]:
        def parse(text: str) -> int:
            value = int(text)
            if not low <= value <= high:
                raise argparse.ArgumentTypeError(f"must be in {low}..{high}")
            return value
        return parse

    parser.add_argument("--messages", type=bounded(1, 100000), default=10000,
                        help="messages in the conversation opened (default 10000)")
    parser.add_argument("--starts", type=bounded(1, 100), default=3,
                        help="starts of the client of each kind (default 3)")
    parser.add_argument("--keys", type=bounded(0, 10000), default=120,
                        help="keystrokes measured (default 120; 0 skips)")
    parser.add_argument("--idle", type=bounded(0, 3600), default=60,
                        help="seconds of idle CPU per screen (default 60; 0 skips)")
    parser.add_argument("--dht-nodes", type=bounded(4, 256), default=16,
                        help="nodes of the loopback DHT (default 16)")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument("--screenshots", type=Path, metavar="DIR",
                        help="only save SVG screenshots of the main screens into DIR")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if shutil.which("tmux") is None and options.screenshots is None:
        print("error: the benchmark needs tmux", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="dhtchat-bench-ui-"))
    log(f"work directory {root} (removed at the end)")
    started = time.monotonic()
    try:
        if options.screenshots is not None:
            for path in screenshots(options.screenshots, root, options.dht_nodes):
                print(f"saved {path}")
            return 0
        results = run(options, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["wall_s"] = time.monotonic() - started
    report(results, options)
    load = results["machine"]["load_average"]
    print(f"total wall time {results['wall_s']:.0f} s on {os.cpu_count()} CPUs (load average "
          f"{load[0]:.2f} at the start)")
    if options.json:
        options.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
