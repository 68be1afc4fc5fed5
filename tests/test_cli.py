"""The ``dhtchat`` command line, run as real processes on loopback.

Every test talks only to 127.0.0.0/8. Node processes bind their own 127.0.N.1 address (Linux
routes all of 127/8 to the loopback interface) so the per-/24 routing-table limits behave as
on a real network. Each subprocess is killed in a fixture finaliser, every wait is bounded in
time, and nothing is written to the real home directory: HOME and the XDG directories point
into ``tmp_path``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dhtchat import __version__, cli
from dhtchat.app.keystore import WrongPassphrase, load_identity_document, open_identity
from dhtchat.cli import rpcclient
from dhtchat.cli.printing import NOTICE_MARK
from dhtchat.core.errors import InvalidUserId
from dhtchat.core.identity import decode_user_id, encode_user_id
from dhtchat.core.records import RecordType, app_salt, record_key

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CLI_TIMEOUT = 30.0  # upper bound for one short CLI command
LISTENING = re.compile(r"node ([0-9a-f]{64}) listening on (\d+\.\d+\.\d+\.\d+):(\d+)")
CONTACT_ADDED = re.compile(r"contact added ([0-9a-f]+) at (\S+)")
STORED_ON = re.compile(r"stored on (\d+) of (\d+) nodes")


def _dhtchat_command() -> list[str]:
    """The installed ``dhtchat`` entry point next to this interpreter, else ``-m``."""
    script = Path(sys.executable).parent / "dhtchat"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "dhtchat"]


DHTCHAT = _dhtchat_command()


def _loopback_aliases_work() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.77.1", 0))
        except OSError:
            return False
    return True


needs_loopback_aliases = pytest.mark.skipif(
    not _loopback_aliases_work(), reason="this OS does not route 127.0.N.1 to loopback"
)


def _unused_udp_port(host: str) -> int:
    """A port with (almost certainly) nobody listening on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no DHTCHAT_* from the caller, home and XDG dirs in tmp_path."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("DHTCHAT_")}
    for name in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME",
                 "XDG_STATE_HOME"):
        path = tmp_path / "env" / name.lower()
        path.mkdir(parents=True)
        out[name] = str(path)
    out["PYTHONIOENCODING"] = "utf-8"
    out["PYTHONUNBUFFERED"] = "1"
    return out


def run(args: list[str], env: dict[str, str], *, timeout: float = CLI_TIMEOUT,
        **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run one ``dhtchat`` command to completion (stdin is not a terminal)."""
    return subprocess.run(
        [*DHTCHAT, *args], env={**env, **extra_env}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int,
                          fragment: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]


class NodeProcess:
    """A ``dhtchat node`` subprocess whose stderr log is collected by a reader thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.lines: list[str] = []
        self._eof = False
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [*DHTCHAT, *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        self.node_id = ""
        self.host = ""
        self.port = 0

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def matches(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        with self._cond:
            return [m for line in self.lines if (m := pattern.search(line))]

    def wait_for(self, pattern: re.Pattern[str], *, count: int = 1,
                 timeout: float = 10.0) -> re.Match[str]:
        """The ``count``-th log line matching ``pattern``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            for _ in range(100_000):  # wakes once per log line at most
                found = [m for line in self.lines if (m := pattern.search(line))]
                if len(found) >= count:
                    return found[count - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    break
                self._cond.wait(remaining)
        raise AssertionError(
            f"no {count} line(s) matching {pattern.pattern!r} within {timeout}s "
            f"(exit code {self.proc.poll()}); log:\n{self.log()}"
        )

    def wait_listening(self) -> None:
        match = self.wait_for(LISTENING)
        self.node_id, self.host, self.port = match[1], match[2], int(match[3])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` and return the exit code."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5.0)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5.0)
        finally:
            self._reader.join(timeout=5.0)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


class NodeLauncher:
    """Starts node processes for one test; the fixture kills all of them afterwards."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.started: list[NodeProcess] = []

    def start(self, host: str, *, port: int = 0, bootstrap: list[str] | None = None,
              profile: Path | None = None, **extra_env: str) -> NodeProcess:
        args = ["--profile", str(profile)] if profile is not None else []
        args += ["node", "--host", host, "--port", str(port)]
        for address in bootstrap or []:
            args += ["--bootstrap", address]
        node = NodeProcess(args, {**self.env, **extra_env})
        self.started.append(node)
        node.wait_listening()
        return node

    def network(self, count: int, subnet: int) -> list[NodeProcess]:
        """``count`` nodes on 127.0.{subnet+i}.1, all joined through the first one."""
        first = self.start(f"127.0.{subnet}.1")
        rest = [self.start(f"127.0.{subnet + i}.1", bootstrap=[first.address])
                for i in range(1, count)]
        for node in rest:
            node.wait_for(re.compile(r"joined through"))
        return [first, *rest]


@pytest.fixture
def nodes(env: dict[str, str]) -> Iterator[NodeLauncher]:
    launcher = NodeLauncher(env)
    try:
        yield launcher
    finally:
        for node in launcher.started:
            node.kill()


# ---------------------------------------------------------------------------- basics


def test_version(env: dict[str, str]) -> None:
    result = run(["--version"], env)
    assert result.returncode == EXIT_OK
    assert result.stdout.strip() == f"dhtchat {__version__}"


def test_usage_errors_exit_2(env: dict[str, str]) -> None:
    assert run([], env).returncode == EXIT_USAGE
    assert run(["no-such-command"], env).returncode == EXIT_USAGE
    # dht put/get need --bootstrap
    assert run(["dht", "get", "--record-key", "00" * 32], env).returncode == EXIT_USAGE
    # a bad bootstrap address is a one-line usage error
    bad = run(["dht", "get", "--bootstrap", "nohost", "--record-key", "00" * 32], env)
    assert_one_line_error(bad, EXIT_USAGE, "HOST:PORT")
    # neither --record-key nor --owner, and both
    neither = run(["dht", "get", "--bootstrap", "127.0.0.1:9"], env)
    assert_one_line_error(neither, EXIT_USAGE, "--record-key")
    both = run(["dht", "get", "--bootstrap", "127.0.0.1:9", "--record-key", "00" * 32,
                "--owner", "x", "k"], env)
    assert_one_line_error(both, EXIT_USAGE, "not both")


# ---------------------------------------------------------------------------- identity


def test_id_new_no_passphrase_warns_and_show_round_trips(env: dict[str, str],
                                                          tmp_path: Path) -> None:
    profile = tmp_path / "alice"
    created = run(["--profile", str(profile), "id", "new", "--no-passphrase"], env)
    assert created.returncode == EXIT_OK, created.stderr
    user_id = created.stdout.strip()
    assert len(created.stdout.splitlines()) == 1
    assert "warning" in created.stderr.lower() and "unencrypted" in created.stderr.lower()
    public_key = decode_user_id(user_id)
    assert encode_user_id(public_key) == user_id

    shown = run(["--profile", str(profile), "id", "show"], env)
    assert shown.returncode == EXIT_OK, shown.stderr
    assert shown.stdout.strip() == user_id
    assert "fingerprint" in shown.stderr

    # unencrypted means the seed *is* in the file (this makes the at-rest check below
    # meaningful) and it opens without a passphrase
    doc = load_identity_document(profile / "identity.json")
    identity = open_identity(doc, None)
    assert identity.public_key == public_key
    assert base64.b64encode(identity.seed).decode() in (profile / "identity.json").read_text()

    # a second `id new` refuses to overwrite the identity
    before = (profile / "identity.json").read_bytes()
    again = run(["--profile", str(profile), "id", "new", "--no-passphrase"], env)
    assert_one_line_error(again, EXIT_USAGE, "already exists")
    assert (profile / "identity.json").read_bytes() == before


def test_id_show_qr(env: dict[str, str], tmp_path: Path) -> None:
    profile = tmp_path / "qr"
    user_id = run(["--profile", str(profile), "id", "new", "--no-passphrase"], env).stdout
    shown = run(["--profile", str(profile), "id", "show", "--qr"], env)
    assert shown.returncode == EXIT_OK, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == user_id.strip()
    qr = lines[1:]
    assert len(qr) >= 10  # a version-3+ QR code is 29+ modules, in half-height rows
    assert all(any(ch in line for ch in "█▀▄") for line in qr if line.strip())


def test_id_show_without_identity(env: dict[str, str], tmp_path: Path) -> None:
    result = run(["--profile", str(tmp_path / "empty"), "id", "show"], env)
    assert_one_line_error(result, EXIT_USAGE, "no identity")


def test_identity_encrypted_at_rest(env: dict[str, str], tmp_path: Path) -> None:
    profile = tmp_path / "bob"
    created = run(["--profile", str(profile), "id", "new"], env,
                  DHTCHAT_PASSPHRASE="correct horse")
    assert created.returncode == EXIT_OK, created.stderr
    assert "unencrypted" not in created.stderr.lower()
    user_id = created.stdout.strip()

    path = profile / "identity.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    doc = load_identity_document(path)
    identity = open_identity(doc, "correct horse")
    assert identity.user_id == user_id
    seed = identity.seed
    for encoded in (seed, seed.hex().encode(), base64.b64encode(seed),
                    base64.b64encode(seed).rstrip(b"=")):
        assert encoded not in raw
    assert "seed" not in doc
    with pytest.raises(WrongPassphrase):
        open_identity(doc, "correct horse!")
    with pytest.raises(WrongPassphrase):
        open_identity(doc, None)

    # `id show` needs no passphrase (the public key is stored in clear)
    shown = run(["--profile", str(profile), "id", "show"], env)
    assert shown.stdout.strip() == user_id

    # using the key with a wrong passphrase: exit 2, one line, no traceback, before any
    # network traffic (the bootstrap address has nobody listening)
    port = _unused_udp_port("127.0.0.1")
    wrong = run(["--profile", str(profile), "dht", "put", "--bootstrap", f"127.0.0.1:{port}",
                 "k", "v"], env, DHTCHAT_PASSPHRASE="wrong", timeout=15.0)
    assert_one_line_error(wrong, EXIT_USAGE, "wrong passphrase")
    # no passphrase available at all (no variable, stdin not a terminal): also exit 2
    missing = run(["--profile", str(profile), "dht", "put", "--bootstrap",
                   f"127.0.0.1:{port}", "k", "v"], env, timeout=15.0)
    assert_one_line_error(missing, EXIT_USAGE, "DHTCHAT_PASSPHRASE")


def test_id_new_refuses_empty_or_missing_passphrase(env: dict[str, str],
                                                     tmp_path: Path) -> None:
    profile = tmp_path / "nopass"
    empty = run(["--profile", str(profile), "id", "new"], env, DHTCHAT_PASSPHRASE="")
    assert_one_line_error(empty, EXIT_USAGE, "--no-passphrase")
    missing = run(["--profile", str(profile), "id", "new"], env)  # stdin is /dev/null
    assert_one_line_error(missing, EXIT_USAGE, "passphrase")
    assert not (profile / "identity.json").exists()


# Run in a new session, open the pseudo-terminal so it becomes the controlling terminal
# (what getpass reads through /dev/tty), then exec the command line given in argv.
_WITH_CONTROLLING_TTY = (
    "import os, sys; os.close(os.open(os.ttyname(0), os.O_RDWR)); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs a Linux pty")
def test_id_new_prompts_for_passphrase_on_a_terminal(env: dict[str, str],
                                                      tmp_path: Path) -> None:
    import pty  # noqa: PLC0415  (POSIX only)

    profile = tmp_path / "prompted"
    command = [*DHTCHAT, "--profile", str(profile), "id", "new"]
    if not os.path.isabs(command[0]):
        pytest.skip("needs an absolute path to the dhtchat command")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WITH_CONTROLLING_TTY, *command], env=env, stdin=slave,
        stdout=slave, stderr=slave, start_new_session=True,
    )
    os.close(slave)
    output = b""
    answered = 0
    try:
        deadline = time.monotonic() + 20.0
        for _ in range(10_000):
            if time.monotonic() > deadline:
                break
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
            if output.count(b"assphrase:") > answered:
                answered += 1
                os.write(master, b"typed secret\n")
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5.0)
        os.close(master)
    assert answered == 2, output  # "Passphrase:" and "Repeat passphrase:"
    assert code == EXIT_OK, output
    assert b"typed secret" not in output  # not echoed
    doc = load_identity_document(profile / "identity.json")
    assert open_identity(doc, "typed secret").user_id.encode() in output


def test_profile_resolution(env: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "dhtchat-home"
    explicit = tmp_path / "explicit"
    # $DHTCHAT_HOME is used when there is no --profile
    via_env = run(["id", "new", "--no-passphrase"], env, DHTCHAT_HOME=str(home))
    assert via_env.returncode == EXIT_OK, via_env.stderr
    assert (home / "identity.json").is_file()
    shown = run(["id", "show"], env, DHTCHAT_HOME=str(home))
    assert shown.stdout == via_env.stdout
    # --profile wins over $DHTCHAT_HOME
    via_flag = run(["--profile", str(explicit), "id", "new", "--no-passphrase"], env,
                   DHTCHAT_HOME=str(home))
    assert via_flag.returncode == EXIT_OK, via_flag.stderr
    assert (explicit / "identity.json").is_file()
    assert via_flag.stdout != via_env.stdout
    # neither: the platform's user data dir (inside our fake HOME / XDG_DATA_HOME)
    default = run(["id", "new", "--no-passphrase"], env)
    assert default.returncode == EXIT_OK, default.stderr
    found = list((tmp_path / "env").rglob("identity.json"))
    assert len(found) == 1, found
    if sys.platform.startswith("linux"):
        assert found[0] == Path(env["XDG_DATA_HOME"]) / "dhtchat" / "identity.json"
    shown = run(["id", "show"], env)
    assert shown.stdout == default.stdout


def test_mistyped_owner_id_is_rejected(env: dict[str, str], tmp_path: Path) -> None:
    profile = tmp_path / "typo"
    user_id = run(["--profile", str(profile), "id", "new", "--no-passphrase"],
                  env).stdout.strip()
    position = len(user_id) // 2
    replacement = "b" if user_id[position] == "a" else "a"
    typo = user_id[:position] + replacement + user_id[position + 1:]
    with pytest.raises(InvalidUserId):
        decode_user_id(typo)
    # the id is checked before any network use: nobody listens on this port
    port = _unused_udp_port("127.0.0.1")
    for bad in (typo, user_id[:-1], user_id + "a", user_id.replace(user_id[3], "1", 1)):
        result = run(["dht", "get", "--bootstrap", f"127.0.0.1:{port}", "--owner", bad, "k"],
                     env, timeout=15.0)
        assert_one_line_error(result, EXIT_USAGE, "user id")


# ---------------------------------------------------------------------------- node


@needs_loopback_aliases
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_node_stops_cleanly_on_signal(nodes: NodeLauncher, sig: int) -> None:
    node = nodes.start("127.0.61.1")
    assert node.host == "127.0.61.1" and node.port > 0
    first = node.log().splitlines()[0]
    assert f"listening on 127.0.61.1:{node.port}" in first
    assert node.stop(sig) == EXIT_OK
    assert "node stopped" in node.log()
    assert "Traceback" not in node.log()


@needs_loopback_aliases
def test_node_without_profile_uses_an_ephemeral_key(nodes: NodeLauncher,
                                                    env: dict[str, str]) -> None:
    first = nodes.start("127.0.62.1")
    assert first.stop() == EXIT_OK
    second = nodes.start("127.0.62.1")
    assert second.stop() == EXIT_OK
    assert first.node_id != second.node_id
    assert not list(Path(env["HOME"]).parent.rglob("node.sqlite"))


@needs_loopback_aliases
def test_node_port_in_use_is_a_usage_error(nodes: NodeLauncher) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.63.1", 0))
        port = taken.getsockname()[1]
        node = NodeProcess(["node", "--host", "127.0.63.1", "--port", str(port)], nodes.env)
        nodes.started.append(node)
        code = node.proc.wait(timeout=CLI_TIMEOUT)
        node.kill()  # joins the reader thread
    assert code == EXIT_USAGE
    assert "cannot listen" in node.log()
    assert "Traceback" not in node.log()


@needs_loopback_aliases
def test_restarted_node_rejoins_without_bootstrap(nodes: NodeLauncher, env: dict[str, str],
                                                  tmp_path: Path) -> None:
    profile = tmp_path / "persistent-node"
    first, third, fourth = nodes.network(3, subnet=71)
    # the profiled node joins last, so it learns about every other node
    node = nodes.start("127.0.74.1", bootstrap=[first.address], profile=profile)
    node.wait_for(re.compile(r"joined through"))
    node.wait_for(CONTACT_ADDED, count=3)
    node_id, port = node.node_id, node.port

    assert node.stop(signal.SIGTERM) == EXIT_OK
    db_path = profile / "node.sqlite"
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    with sqlite3.connect(db_path) as db:
        saved = {(host, int(p)) for host, p in db.execute("SELECT host, port FROM contacts")}
        key_rows = db.execute("SELECT count(*) FROM meta WHERE name='node_key'").fetchone()
    db.close()
    assert {(n.host, n.port) for n in (first, third, fourth)} <= saved
    assert key_rows == (1,)

    # restart WITHOUT --bootstrap, on a new port (as after a reboot behind a NAT): nobody
    # knows this address, so any contact it gets comes from its own remembered contacts
    new_port = next(p for p in (_unused_udp_port("127.0.74.1") for _ in range(10)) if p != port)
    again = nodes.start("127.0.74.1", port=new_port, profile=profile)
    assert again.node_id == node_id
    remembered = again.wait_for(re.compile(r"re-verifying (\d+) remembered contacts"))
    assert int(remembered[1]) >= 3
    again.wait_for(CONTACT_ADDED, count=3)
    re_added = {m[2] for m in again.matches(CONTACT_ADDED)}
    assert {first.address, third.address, fourth.address} <= re_added
    assert "joined through" not in again.log()

    # the network works through it: a put bootstrapped only through the restarted node
    # reaches the other nodes (it could only name them from its remembered contacts) ...
    put = run(["dht", "put", "--bootstrap", again.address, "after-restart", "still here"],
              env)
    assert put.returncode == EXIT_OK, put.stderr
    stored = STORED_ON.search(put.stderr)
    assert stored is not None, put.stderr
    assert int(stored[1]) >= 3, put.stderr
    # ... and a get through another node finds the value
    get = run(["dht", "get", "--bootstrap", fourth.address, "--record-key",
               put.stdout.strip(), "--timeout", "5"], env)
    assert get.returncode == EXIT_OK, get.stderr
    assert get.stdout == "still here\n"
    assert again.stop(signal.SIGINT) == EXIT_OK


# ---------------------------------------------------------------------------- dht


@needs_loopback_aliases
def test_put_get_end_to_end(nodes: NodeLauncher, env: dict[str, str],
                            tmp_path: Path) -> None:
    network = nodes.network(4, subnet=81)
    profile = tmp_path / "carol"
    created = run(["--profile", str(profile), "id", "new", "--no-passphrase"], env)
    assert created.returncode == EXIT_OK, created.stderr
    user_id = created.stdout.strip()
    owner = decode_user_id(user_id)

    # put through one node, signed by the profile's identity
    put = run(["--profile", str(profile), "dht", "put", "--bootstrap", network[1].address,
               "greeting", "hello world", "--ttl", "600"], env)
    assert put.returncode == EXIT_OK, put.stderr
    key_hex = put.stdout.strip()
    assert key_hex == record_key(RecordType.APP, owner, app_salt("greeting")).hex()
    assert f"owner {user_id}" in put.stderr
    stored = STORED_ON.search(put.stderr)
    assert stored is not None and int(stored[1]) >= 1, put.stderr

    # get by owner + key through another node
    get = run(["dht", "get", "--bootstrap", network[3].address, "--owner", user_id,
               "greeting"], env)
    assert get.returncode == EXIT_OK, get.stderr
    assert get.stdout == "hello world\n"

    # --json
    as_json = run(["dht", "get", "--bootstrap", network[2].address, "--owner", user_id,
                   "greeting", "--json"], env)
    assert as_json.returncode == EXIT_OK, as_json.stderr
    items = json.loads(as_json.stdout)
    assert isinstance(items, list) and len(items) == 1
    item = items[0]
    assert item["owner"] == user_id
    assert isinstance(item["seq"], int) and item["seq"] > 0
    assert item["value"] == "hello world"
    assert base64.b64decode(item["value_base64"]) == b"hello world"
    assert 0 < item["expires"] - time.time() <= 600 + 5

    # --record-key HEX
    by_key = run(["dht", "get", "--bootstrap", network[0].address, "--record-key", key_hex],
                 env)
    assert by_key.returncode == EXIT_OK, by_key.stderr
    assert by_key.stdout == "hello world\n"

    # an update replaces the value (its seq is newer)
    update = run(["--profile", str(profile), "dht", "put", "--bootstrap", network[2].address,
                  "greeting", "hello again"], env)
    assert update.returncode == EXIT_OK, update.stderr
    assert update.stdout.strip() == key_hex
    newest = run(["dht", "get", "--bootstrap", network[1].address, "--owner", user_id,
                  "greeting", "--json"], env)
    assert newest.returncode == EXIT_OK, newest.stderr
    [updated] = json.loads(newest.stdout)
    assert updated["value"] == "hello again" and updated["seq"] > item["seq"]

    # a key nobody stored: exit 1, nothing on stdout
    missing = run(["dht", "get", "--bootstrap", network[1].address, "--owner", user_id,
                   "no-such-key", "--timeout", "3"], env)
    assert missing.returncode == EXIT_FAILED, missing.stderr
    assert missing.stdout == ""
    assert "not found" in missing.stderr

    # bad hex and wrong length: usage errors
    for bad in ("zz" * 32, key_hex[:-2], key_hex + "00"):
        result = run(["dht", "get", "--bootstrap", network[1].address, "--record-key", bad],
                     env)
        assert_one_line_error(result, EXIT_USAGE, "64 hex digits")


@needs_loopback_aliases
def test_no_bootstrap_node_answering(env: dict[str, str]) -> None:
    host = "127.0.91.1"
    dead = f"{host}:{_unused_udp_port(host)}"
    started = time.monotonic()
    # run the put and the get concurrently: each waits a few seconds for an answer
    procs = {
        "put": subprocess.Popen(
            [*DHTCHAT, "dht", "put", "--bootstrap", dead, "k", "v", "--timeout", "3"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True),
        "get": subprocess.Popen(
            [*DHTCHAT, "dht", "get", "--bootstrap", dead, "--record-key", "ab" * 32,
             "--timeout", "3"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True),
    }
    results: dict[str, tuple[int, str, str]] = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=CLI_TIMEOUT)
            results[name] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=5.0)
    assert time.monotonic() - started < CLI_TIMEOUT
    for name, (code, out, err) in results.items():
        assert code != EXIT_OK, (name, out, err)
        assert code == EXIT_FAILED, (name, code, err)
        assert out == "", name
        assert "Traceback" not in err
        assert f"no DHT node answered at {dead}" in err, (name, err)


# --- how messages and groups print (review items 9, 10, 12; a fake daemon, no processes) ---

def _fake_daemon(monkeypatch: pytest.MonkeyPatch, answers: dict[str, Any]) -> None:
    async def fake_call(path: Path, method: str, params: dict[str, Any],
                        timeout: float) -> Any:
        return answers[method]
    monkeypatch.setattr(rpcclient, "rpc_call", fake_call)


ME, BOB, CAROL = "m" * 50, "b" * 50, "c" * 50


def _printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str], messages: list[dict[str, Any]],
             contacts: list[dict[str, Any]], command: list[str]) -> list[str]:
    _fake_daemon(monkeypatch, {"contact.list": contacts, "message.history": messages,
                               "message.receive": messages, "group.list": messages,
                               "status": {"public_key": ME, "id": ME}})
    assert cli.main(["--profile", str(tmp_path / "p"), *command]) == EXIT_OK
    return capsys.readouterr().out.splitlines()


def _message(text: str, kind: str, author: str = BOB, **extra: Any) -> dict[str, Any]:
    return {"from": author, "author": author, "text": text, "kind": kind, "timestamp": 0.0,
            "read": False, "delivered": False, "group": None, **extra}


def test_a_text_can_never_print_like_a_notice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Item 10: Bob types the timer notice (even with the notice mark, even from a contact
    named with the mark): nothing he chooses prints as the notice does."""
    notice = "[timer] disappearing messages off"
    contacts = [{"name": "bob", "state": "accepted", "id": BOB},
                {"name": f"{NOTICE_MARK} bob", "state": "accepted", "id": CAROL}]
    lines = _printed(tmp_path, monkeypatch, capsys, [
        _message(notice, "notice"), _message(notice, "text"),
        _message(f"{NOTICE_MARK} {notice}", "text"), _message("\u2690 x", "text"),
        _message(notice, "text", author=CAROL)], contacts, ["history", "bob"])
    real, *faked = lines
    assert real.endswith(f"] {NOTICE_MARK} bob: {notice}")
    for line in faked:
        assert line != real and NOTICE_MARK not in line and "\u2690" not in line, line
    assert faked[1].endswith(f"bob: \\u2691 {notice}")


def test_group_messages_print_their_author_and_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Item 9: a group message relayed by the admin (Bob) prints as Carol's, in the group."""
    contacts = [{"name": "bob", "state": "accepted", "id": BOB}]
    relayed = _message("hello", "text", author=CAROL, group="ab" * 16, group_name="desk",
                       author_name="carol")
    mine = dict(_message("mine", "text", author=ME, group="ab" * 16, group_name="desk"),
                to="ab" * 16)
    for command in (["receive"], ["history", "desk"]):
        lines = _printed(tmp_path, monkeypatch, capsys, [relayed, mine], contacts, command)
        assert lines[0].endswith("] [desk] carol: hello"), lines
        assert lines[1].endswith("] [desk] me: mine …"), lines


def test_group_list_shows_the_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Item 12: `group list` says who is in each group (names of contacts, else ids)."""
    contacts = [{"name": "bob", "state": "accepted", "id": BOB}]
    row = {"id": "ab" * 16, "name": "desk", "admin": BOB, "version": 2,
           "members": [BOB, CAROL, ME], "i_am_admin": False, "active": True}
    _fake_daemon(monkeypatch, {"contact.list": contacts, "group.list": [row],
                               "status": {"public_key": ME, "id": ME}})
    assert cli.main(["--profile", str(tmp_path / "p"), "group", "list"]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"bob (admin), {CAROL}, me" in out, out
