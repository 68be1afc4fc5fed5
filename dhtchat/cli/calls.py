"""``dhtchat call`` and ``dhtchat answer``: voice and video calls (2-5 people), their
progress, SAS and statistics."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any, Final

from dhtchat.app.rpc import INVALID_PARAMS, RpcError
from dhtchat.cli.errors import EXIT_FAILED, EXIT_OK, UsageError
from dhtchat.cli.rpcclient import rpc

_MEDIA_PREFIXES = ("tone", "pulse", "alsa", "v4l2", "lavfi")


def _media_spec(value: str | None) -> str | None:
    """A media spec for the daemon: file paths made absolute (its working directory is not
    ours); tone:, silence, null and device specs as given."""
    if value is None or value in ("silence", "null") or \
            value.partition(":")[0] in _MEDIA_PREFIXES:
        return value
    return os.path.abspath(value)


def _media_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name in ("audio_in", "audio_out", "video_in"):
        value = _media_spec(getattr(args, name, None))
        if value is not None:
            params[name] = value
    return params


def _print_call_stats(stats: dict[str, Any]) -> None:
    if not stats:
        return
    rtt = f"{stats['rtt_ms']:.0f} ms" if stats.get("rtt_ms") is not None else "-"
    jitter = f"{stats['jitter_ms']:.1f} ms" if stats.get("jitter_ms") is not None else "-"
    print(f"  {stats['duration_s']:>6.0f} s  rtt {rtt}  jitter {jitter}  loss "
          f"{stats['loss_percent']:.1f}%  send {stats.get('send_kbps', 0):.0f} kbit/s  "
          f"received {stats['packets_received']} packets", file=sys.stderr, flush=True)


def _follow_call(args: argparse.Namespace, call: dict[str, Any], duration: float | None,
                 stats_every: float = 5.0) -> int:
    """Print the call's progress, SAS and stats until it ends (hang up after ``duration``
    s of media, or on Ctrl-C); 0 after a normal hang-up."""
    shown_state, shown_sas = "", None
    active_since: float | None = None
    next_stats = 0.0
    try:
        while True:
            if call["state"] != shown_state:
                shown_state = call["state"]
                path = f" ({call['path']})" if call.get("path") else ""
                if shown_state != "ended":
                    print(f"call {shown_state}{path}", file=sys.stderr, flush=True)
            if call.get("sas") and call["sas"] != shown_sas:
                shown_sas = call["sas"]
                print(f"SAS: {shown_sas['words']}  ({shown_sas['number']}) - read these to "
                      "each other; if they differ, someone is in the middle",
                      file=sys.stderr, flush=True)
            if call["state"] == "ended":
                break
            now = time.monotonic()
            if call["state"] == "active":
                active_since = active_since or now
                if now >= next_stats:
                    next_stats = now + stats_every
                    _print_call_stats(rpc(args, "call.status", {"id": call["id"]})["stats"])
                if duration is not None and now - active_since >= duration:
                    call = rpc(args, "call.hangup", {"id": call["id"]})
                    continue
            call = rpc(args, "call.wait", {"id": call["id"], "timeout": 1}, timeout=30)
    except KeyboardInterrupt:
        call = rpc(args, "call.hangup", {"id": call["id"]})
    print(f"call ended: {call['reason']}", file=sys.stderr)
    return EXIT_OK if call["reason"] in ("hung up", "hung up by the contact") else EXIT_FAILED


def _follow_group(args: argparse.Namespace, legs: list[dict[str, Any]],
                  duration: float | None) -> int:
    """Each leg's state and SAS until all ended (hang up all after ``duration`` s with
    every answered leg active, or on Ctrl-C)."""
    shown: dict[str, tuple[str, Any]] = {}
    active_since: float | None = None
    try:
        while True:
            legs = [rpc(args, "call.status", {"id": leg["id"]}) for leg in legs]
            for leg in legs:
                now_shown = (leg["state"], leg.get("sas"))
                if shown.get(leg["id"]) != now_shown:
                    shown[leg["id"]] = now_shown
                    sas = f"  SAS: {leg['sas']['words']} ({leg['sas']['number']})" \
                        if leg.get("sas") and leg["state"] == "active" else ""
                    what = leg["reason"] if leg["state"] == "ended" else leg["state"]
                    print(f"{leg['name']}: {what}{sas}", file=sys.stderr, flush=True)
            if all(leg["state"] == "ended" for leg in legs):
                break
            if any(leg["state"] == "active" for leg in legs):
                active_since = active_since or time.monotonic()
                if duration is not None and time.monotonic() - active_since >= duration:
                    rpc(args, "call.hangup", {"id": legs[0]["id"]})
                    continue
            time.sleep(0.5)
    except KeyboardInterrupt:
        rpc(args, "call.hangup", {"id": legs[0]["id"]})
    print("group call ended", file=sys.stderr)
    return EXIT_OK if any(leg["answered"] for leg in legs) else EXIT_FAILED


def call_outcome(row: dict[str, Any]) -> str:
    """How a logged call ended, saying "missed" once (and a SAS that differed)."""
    reason = str(row["reason"])
    text = (reason if reason.startswith("missed") else f"missed ({reason})") \
        if row.get("missed") else reason
    if row.get("suspicious"):
        text += "  SUSPICIOUS: the SAS words differed"
    return text


RETRIES: Final = 3  # retyped SAS words before `call verify` gives up


def _verify(args: argparse.Namespace, contact: str, spoken: str | None) -> int:
    """``call verify``: mark the contact verified (checking the words it read out, if given).
    Words that do not match are first taken for a typo: in a terminal they can be retyped;
    only ``--differ`` (or answering "differ") marks the call suspicious."""
    if args.differ:
        return _differ(args, contact)
    for _ in range(RETRIES):
        params: dict[str, Any] = {"contact": contact}
        if spoken is not None:
            params["sas"] = spoken
        try:
            result = rpc(args, "call.verify", params)
        except RpcError as exc:
            typo = "do not match" in exc.message or "SAS" in exc.message
            if exc.code != INVALID_PARAMS or not typo or not sys.stdin.isatty():
                raise
            print(f"error: {exc.message.split(': check')[0]}", file=sys.stderr)
            answer = input("Retype the words your contact reads (or type `differ` if they "
                           "really are different words; Enter to stop): ").strip()
            if not answer:
                return EXIT_FAILED
            if answer.lower() == "differ":
                return _differ(args, contact)
            spoken = answer
            continue
        print(f"{result['name']} is verified (SAS {result['sas']})", file=sys.stderr)
        return EXIT_OK
    print("error: the words still do not match; nothing was marked", file=sys.stderr)
    return EXIT_FAILED


def _differ(args: argparse.Namespace, contact: str) -> int:
    result = rpc(args, "call.verify", {"contact": contact, "differ": True})
    print(f"WARNING: the SAS words of your call with {result['name']} differed: someone may "
          "be in the middle of it. The call is marked suspicious and the contact is not "
          "verified; hang up and check the contact's id another way.", file=sys.stderr)
    return EXIT_FAILED


def cmd_call(args: argparse.Namespace) -> int:
    """Start a call (or group call), or list, stats, verify, hangup and controls."""
    words = args.target
    if words[0] == "list" and len(words) == 1:
        rows = rpc(args, "call.list", {"limit": args.limit})
        if args.json:
            print(json.dumps(rows, indent=2))
            return EXIT_OK
        for row in rows:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["started"]))
            length = (f"{row['ended'] - row['answered']:.0f} s"
                      if row["answered"] and row["ended"] else "")
            print(f"{when}  {row['direction']:<8} {row['name']:<16} {call_outcome(row)} "
                  f"{length}".rstrip())
        return EXIT_OK
    if words[0] == "stats" and len(words) == 1:
        status = rpc(args, "call.status", {})
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            print(f"{status['state']} call with {status['name']}", file=sys.stderr)
            _print_call_stats(status["stats"])
        return EXIT_OK
    if words[0] == "verify" and len(words) in (2, 3):
        spoken = args.sas or (words[2] if len(words) == 3 else None)
        return _verify(args, words[1], spoken)
    if words[0] == "hangup" and len(words) == 1:
        rpc(args, "call.hangup", {})
        return EXIT_OK
    controls = {"mute": ("mute", True), "unmute": ("mute", False), "hold": ("hold", True),
                "resume": ("hold", False), "camera-on": ("camera", True),
                "camera-off": ("camera", False)}
    if words[0] in controls and len(words) == 1:
        name, value = controls[words[0]]
        status = rpc(args, "call.control", {name: value})
        print(f"{status['name']}: muted={status['muted']} held={status['held']} "
              f"camera_off={status['camera_off']}", file=sys.stderr)
        return EXIT_OK
    if len(words) > 5:
        raise UsageError("usage: dhtchat call NAME_OR_ID [NAME_OR_ID ...] (a group call of "
                         "up to 5 people) | call list | call stats | "
                         "call verify NAME_OR_ID [WORDS] | call hangup")
    if len(words) > 1:
        group = rpc(args, "call.start", {"to": words, **_media_params(args)}, timeout=120)
        print(f"group call with {', '.join(c['name'] for c in group['calls'])}...",
              file=sys.stderr, flush=True)
        return _follow_group(args, group["calls"], args.duration)
    params = {"to": words[0], "video": args.video, **_media_params(args)}
    call = rpc(args, "call.start", params, timeout=90)
    print(f"calling {call['name']}...", file=sys.stderr, flush=True)
    return _follow_call(args, call, args.duration)


def cmd_answer(args: argparse.Namespace) -> int:
    """Answer the incoming call, or with ``--auto`` every call until Ctrl-C."""
    media = _media_params(args)
    if args.auto:
        rpc(args, "call.auto_answer", {"enabled": True, **media})
        print("answering every call (Ctrl-C to stop)", file=sys.stderr, flush=True)
        try:
            while True:
                call = rpc(args, "call.wait", {"timeout": 60}, timeout=90)
                if call is not None and call["state"] != "ended":
                    print(f"call from {call['name']}", file=sys.stderr, flush=True)
                    _follow_call(args, call, None)
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            with contextlib.suppress(Exception):
                rpc(args, "call.auto_answer", {"enabled": False})
    call = rpc(args, "call.wait", {"timeout": args.timeout}, timeout=args.timeout + 30)
    if call is None or call["state"] != "ringing" or call["direction"] != "incoming":
        print("no incoming call", file=sys.stderr)
        return EXIT_FAILED
    print(f"answering {call['name']}", file=sys.stderr, flush=True)
    call = rpc(args, "call.answer", {"id": call["id"], **media}, timeout=90)
    return _follow_call(args, call, None)
