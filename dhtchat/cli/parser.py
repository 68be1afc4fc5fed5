"""The argument parser of the ``dhtchat`` command: every subcommand and its options."""

from __future__ import annotations

import argparse

from dhtchat import __version__
from dhtchat.cli.backup import cmd_backup, cmd_restore
from dhtchat.cli.calls import cmd_answer, cmd_call
from dhtchat.cli.contacts import cmd_connect, cmd_contact
from dhtchat.cli.daemon import cmd_daemon
from dhtchat.cli.dht import cmd_dht_get, cmd_dht_put
from dhtchat.cli.files import cmd_file
from dhtchat.cli.groups import cmd_group
from dhtchat.cli.identity import cmd_id_new, cmd_id_passphrase, cmd_id_show
from dhtchat.cli.messages import cmd_history, cmd_receive, cmd_send, cmd_timer
from dhtchat.cli.node import cmd_demo, cmd_node
from dhtchat.cli.simulate import cmd_simulate
from dhtchat.ui import cmd_ui


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="dhtchat", description="Serverless end-to-end encrypted messenger on a DHT."
    )
    parser.add_argument("--version", action="version", version=f"dhtchat {__version__}")
    parser.add_argument("--profile", metavar="DIR",
                        help="profile directory (default: $DHTCHAT_HOME or the user data dir)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # No subcommand: the desktop client (`dhtchat ui`), see main().
    sub = parser.add_subparsers(dest="command")

    ui = sub.add_parser("ui", help="the desktop client (also: dhtchat with no command)")
    ui.add_argument("--bootstrap", metavar="HOST:PORT", nargs="+", action="extend",
                    help="known DHT node(s), for a daemon the client starts")
    ui.add_argument("--port", type=int, help="UDP port of a daemon the client starts "
                    "(default: the one it used last, else a free one)")
    ui.add_argument("--host", help="address a daemon the client starts binds to")
    ui.set_defaults(func=cmd_ui)

    id_parser = sub.add_parser("id", help="manage your identity")
    id_sub = id_parser.add_subparsers(dest="id_command", required=True)
    new = id_sub.add_parser("new", help="create a new identity and print its user id")
    new.add_argument("--no-passphrase", action="store_true",
                     help="store the key unencrypted (not recommended)")
    new.set_defaults(func=cmd_id_new)
    change = id_sub.add_parser("passphrase", help="change the passphrase of your identity "
                               "(new one from $DHTCHAT_NEW_PASSPHRASE or the terminal)")
    change.add_argument("--no-passphrase", action="store_true",
                        help="remove the passphrase (not recommended)")
    change.set_defaults(func=cmd_id_passphrase)
    show = id_sub.add_parser("show", help="print your user id")
    show.add_argument("--qr", action="store_true", help="also print a terminal QR code")
    show.set_defaults(func=cmd_id_show)

    backup = sub.add_parser("backup", help="write an encrypted backup of the profile "
                            "(daemon stopped; passphrase from $DHTCHAT_BACKUP_PASSPHRASE or "
                            "the terminal)")
    backup.add_argument("file", metavar="FILE")
    backup.add_argument("--history", action="store_true",
                        help="also the message history, call log and received files")
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser("restore", help="build a new profile (--profile DIR) from a "
                             "backup; contacts reconnect without new requests")
    restore.add_argument("file", metavar="FILE")
    restore.add_argument("--no-passphrase", action="store_true",
                         help="store the restored identity key unencrypted (not recommended)")
    restore.set_defaults(func=cmd_restore)

    node = sub.add_parser("node", help="run a headless DHT node until SIGINT/SIGTERM")
    node.add_argument("--port", type=int, required=True, help="UDP port (0: any free port)")
    node.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    node.add_argument("--bootstrap", metavar="HOST:PORT", nargs="+", action="extend",
                      help="known node(s) to join through")
    node.set_defaults(func=cmd_node)

    dht = sub.add_parser("dht", help="store and fetch signed values")
    dht_sub = dht.add_subparsers(dest="dht_command", required=True)
    put = dht_sub.add_parser("put", help="store VALUE under the application key KEY")
    # One address per flag (repeatable): nargs="+" would swallow the positional KEY VALUE.
    put.add_argument("--bootstrap", metavar="HOST:PORT", action="append", required=True,
                     help="a known node (repeat the flag for several)")
    put.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    put.add_argument("--timeout", type=float, default=15.0)
    put.add_argument("key", metavar="KEY")
    put.add_argument("value", metavar="VALUE")
    put.set_defaults(func=cmd_dht_put)
    get = dht_sub.add_parser("get", help="fetch a value")
    get.add_argument("--bootstrap", metavar="HOST:PORT", action="append", required=True,
                     help="a known node (repeat the flag for several)")
    get.add_argument("--record-key", metavar="HEX")
    get.add_argument("--owner", metavar="ID", help="owner's user id (with KEY)")
    get.add_argument("--json", action="store_true", help="print records as JSON")
    get.add_argument("--timeout", type=float, default=15.0)
    get.add_argument("key", metavar="KEY", nargs="?")
    get.set_defaults(func=cmd_dht_get)

    sim = sub.add_parser(
        "simulate", help="simulate a large DHT on virtual time (see docs/simulator.md)",
        description="Run a scenario (TOML, see simulations/) with optional overrides, or "
                    "`dhtchat simulate sweep SWEEP.toml ...` for parameter sweeps.")
    sim.add_argument("scenario", nargs="?", metavar="SCENARIO.toml")
    sim.add_argument("--nodes", type=int)
    sim.add_argument("--lookups", type=int)
    sim.add_argument("--seed", type=int)
    sim.add_argument("--k", type=int)
    sim.add_argument("--alpha", type=int)
    sim.add_argument("--join", choices=["realistic", "oracle"])
    sim.add_argument("--churn", metavar="PRESET")
    sim.add_argument("--baseline", choices=["kademlia"])
    sim.add_argument("--workers", type=int, metavar="N",
                     help="spread the nodes over N processes (needs a latency floor)")
    sim.add_argument("--out", metavar="DIR", default="sim-out")
    sim.add_argument("--no-plots", action="store_true")
    sim.set_defaults(func=cmd_simulate)

    daemon = sub.add_parser("daemon", help="run your node: DHT, contacts, connections")
    daemon.add_argument("--port", type=int,
                        help="UDP port of the DHT node (default: the profile's port of the "
                        "last run, else a free one, kept for the next run)")
    daemon.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    daemon.add_argument("--bootstrap", metavar="HOST:PORT", nargs="+", action="extend",
                        help="known DHT node(s) to join through")
    daemon.add_argument("--stun", metavar="HOST:PORT", nargs="+", action="extend",
                        help="STUN server(s) to use instead of DHT peers")
    daemon.add_argument("--turn", metavar="URL", help="TURN server, e.g. turn:HOST:3478")
    daemon.add_argument("--turn-user", metavar="U")
    daemon.add_argument("--turn-pass", metavar="P")
    daemon.add_argument("--relay-only", action="store_true",
                        help="connect only through TURN: peers never learn your IP")
    daemon.add_argument("--ice-address", metavar="IP", action="append",
                        help="offer only these local addresses as ICE host candidates")
    daemon.add_argument("--name", help="display name sent with your contact requests")
    daemon.add_argument("--dht-mode", choices=("auto", "server", "client"), default="auto",
                        help="DHT role: a read-only client (behind a NAT other nodes cannot "
                        "reach: their lookups never wait for it), a server, or auto (default: "
                        "a client until peers see this node at its own address)")
    daemon.add_argument("--dht-client", action="store_true",
                        help="the same as --dht-mode client")
    daemon.add_argument("--no-lan-discovery", action="store_true",
                        help="neither announce this node on the local network nor listen for "
                        "other dhtchat nodes there (LAN discovery is on by default)")
    daemon.add_argument("--connect-timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    daemon.set_defaults(func=cmd_daemon)

    contact = sub.add_parser("contact", help="contact requests and the contact list")
    contact_sub = contact.add_subparsers(dest="contact_command", required=True)
    c_request = contact_sub.add_parser("request", help="ask ID to become a contact")
    c_request.add_argument("id", metavar="ID")
    c_request.add_argument("--name", help="YOUR display name, the one they will see")
    c_request.add_argument("--as", dest="contact_name", metavar="NAME",
                           help="what to call THEM in your contact list")
    c_request.add_argument("--message", default="", help="a short note (280 characters)")
    c_pending = contact_sub.add_parser("pending", help="requests waiting for an answer")
    c_pending.add_argument("--json", action="store_true")
    c_accept = contact_sub.add_parser("accept", help="accept a request")
    c_accept.add_argument("id", metavar="ID")
    c_accept.add_argument("--name", help="what to call this contact")
    for name, text in (("refuse", "refuse a request"), ("block", "block an id for good"),
                       ("unblock", "forget a block")):
        c_other = contact_sub.add_parser(name, help=text)
        c_other.add_argument("id", metavar="ID")
    c_list = contact_sub.add_parser("list", help="contacts and their status")
    c_list.add_argument("--json", action="store_true")
    c_rename = contact_sub.add_parser("rename", help="change what you call a contact")
    c_rename.add_argument("id", metavar="NAME_OR_ID")
    c_rename.add_argument("name", metavar="NEW_NAME")
    c_remove = contact_sub.add_parser("remove", help="remove a contact: connection, presence "
                                      "and session stop (the history is kept)")
    c_remove.add_argument("id", metavar="NAME_OR_ID")
    c_remove.add_argument("--delete-history", action="store_true",
                          help="also delete the conversation's messages")
    contact.set_defaults(func=cmd_contact)

    connect = sub.add_parser("connect", help="open an encrypted connection to a contact")
    connect.add_argument("contact", metavar="NAME_OR_ID")
    connect.add_argument("--timeout", type=float, default=30.0)
    connect.add_argument("--json", action="store_true")
    connect.set_defaults(func=cmd_connect)

    send = sub.add_parser("send", help="send a message (queued; delivered when possible)")
    send.add_argument("contact", metavar="NAME_OR_ID")
    send.add_argument("text", metavar="TEXT", nargs="?",
                      help="the message; `-` or none: read it from standard input")
    send.add_argument("--wait", action="store_true",
                      help="return once the delivery receipt arrived")
    send.add_argument("--timeout", type=float, default=60.0)
    send.set_defaults(func=cmd_send)
    receive = sub.add_parser("receive", help="print messages received since the last call")
    receive.add_argument("--json", action="store_true", help="JSON lines")
    receive.add_argument("--follow", action="store_true", help="keep printing new messages")
    receive.set_defaults(func=cmd_receive)
    history = sub.add_parser("history", help="the conversation with a contact")
    history.add_argument("contact", metavar="NAME_OR_ID")
    history.add_argument("--json", action="store_true")
    history.add_argument("--limit", type=int, default=50)
    history.set_defaults(func=cmd_history)

    group = sub.add_parser("group", help="group chats")
    group_sub = group.add_subparsers(dest="group_command", required=True)
    g_create = group_sub.add_parser("create", help="create a group of contacts")
    g_create.add_argument("name", metavar="NAME")
    g_create.add_argument("--member", metavar="ID", action="append", required=True)
    g_invite = group_sub.add_parser("invite", help="admin: add contacts")
    g_invite.add_argument("group", metavar="GROUP")
    g_invite.add_argument("--member", metavar="ID", action="append", required=True)
    g_remove = group_sub.add_parser("remove", help="admin: remove a member")
    g_remove.add_argument("group", metavar="GROUP")
    g_remove.add_argument("member", metavar="ID")
    g_leave = group_sub.add_parser("leave", help="leave a group")
    g_leave.add_argument("group", metavar="GROUP")
    g_list = group_sub.add_parser("list", help="your groups")
    g_list.add_argument("--json", action="store_true")
    group.set_defaults(func=cmd_group)

    timer = sub.add_parser("timer", help="disappearing messages for a conversation")
    timer.add_argument("contact", metavar="NAME_OR_ID")
    timer.add_argument("seconds", metavar="DURATION",
                       help="delete messages this long after they are read: 90s, 30m, 1h, "
                       "7d, 2w or seconds (0 or off: never)")
    timer.set_defaults(func=cmd_timer)

    files = sub.add_parser("file", help="send and receive files")
    file_sub = files.add_subparsers(dest="file_command", required=True)
    f_send = file_sub.add_parser("send", help="send a file of any size (resumable)")
    f_send.add_argument("contact", metavar="NAME_OR_ID")
    f_send.add_argument("path", metavar="PATH")
    f_send.add_argument("--wait", action="store_true", help="show progress until it arrived")
    f_send.add_argument("--timeout", type=float, default=24 * 3600.0)
    f_list = file_sub.add_parser("list", help="transfers and their progress")
    f_list.add_argument("--json", action="store_true")
    f_get = file_sub.add_parser("get", help="copy a received file out")
    f_get.add_argument("id", metavar="ID")
    f_get.add_argument("dest", metavar="DEST")
    for verb, text in (("accept", "download an offered file"), ("decline", "refuse an offer"),
                       ("cancel", "stop a transfer (a partial download is deleted)")):
        file_sub.add_parser(verb, help=text).add_argument("id", metavar="ID")
    f_limits = file_sub.add_parser("limits", help="show or set the auto-accept size and quotas")
    for option in ("--auto-accept", "--contact-quota", "--total-quota"):
        f_limits.add_argument(option, type=int, metavar="BYTES")
    files.set_defaults(func=cmd_file)

    call = sub.add_parser("call", help="voice/video calls: call NAME_OR_ID [NAME_OR_ID ...] "
                          "(2-4 names: a group call), call list, call stats, "
                          "call verify NAME_OR_ID [WORDS], call hangup, call mute|unmute|"
                          "hold|resume|camera-on|camera-off")
    call.add_argument("target", nargs="+",
                      metavar="NAME_OR_ID [...] | list | stats | verify | hangup | mute ...")
    call.add_argument("--video", action="store_true", help="a video call")
    for flag, what in (("--audio-in", "microphone: tone:440, silence, alsa:hw:0, "
                        "pulse:NAME or an audio file (looped); default silence"),
                       ("--audio-out", "speaker: alsa:default, pulse:NAME, null or a file "
                        "to record to (.wav/.ogg/.flac); default null"),
                       ("--video-in", "camera: v4l2:/dev/video0, lavfi:testsrc or a file")):
        call.add_argument(flag, dest=flag[2:].replace("-", "_"), help=what)
    call.add_argument("--duration", type=float, help="hang up after S seconds of media")
    call.add_argument("--sas", help="with verify: the words the contact read to you")
    call.add_argument("--differ", action="store_true",
                      help="with verify: the words the contact read are NOT yours (marks the "
                      "call suspicious: someone may be in the middle)")
    call.add_argument("--limit", type=int, default=50, help="with list: how many")
    call.add_argument("--json", action="store_true")
    call.set_defaults(func=cmd_call)
    answer = sub.add_parser("answer", help="answer the incoming call")
    answer.add_argument("--auto", action="store_true",
                        help="answer every call until Ctrl-C (headless use)")
    for flag in ("--audio-in", "--audio-out", "--video-in"):
        answer.add_argument(flag, dest=flag[2:].replace("-", "_"),
                            help="as for `dhtchat call`")
    answer.add_argument("--timeout", type=float, default=60.0,
                        help="wait this long for a call to ring")
    answer.set_defaults(func=cmd_answer)

    demo = sub.add_parser("demo", help="chat, send a file and call a demo contact on a local "
                          "DHT on loopback (the transcript without a terminal)")
    demo.add_argument("--dht", action="store_true",
                      help="only the DHT: a signed put/get and a listen push")
    demo.add_argument("--nodes", type=int, default=16)
    demo.add_argument("--timeout", type=float, default=180.0,
                      help="fail if the conversation is not done within this many seconds")
    demo.add_argument("--keep-running", action="store_true",
                      help="keep the network (and the demo contact) up until Ctrl-C")
    demo.set_defaults(func=cmd_demo)
    return parser
