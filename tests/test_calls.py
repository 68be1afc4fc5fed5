"""Voice calls between two in-process daemons over a real loopback DHT and real aiortc
connections: tones both ways recorded to WAV and checked by FFT; equal SAS on both sides;
a substituted DTLS fingerprint stops the call before any audio; a SAS nonce reveal that does
not open its commitment is refused; busy, decline, ring timeout, a contact known to be
offline, and the call log."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import av
import numpy as np
import pytest

from dhtchat.app import messenger as messenger_module
from dhtchat.app.calls import Call, CallMedia, fingerprint_signed_bytes, sdp_fingerprint
from dhtchat.app.daemon import Daemon, DaemonOptions
from dhtchat.app.media import audio_duration, dominant_frequency
from dhtchat.app.profile import Profile
from dhtchat.core.identity import SigningIdentity, encode_user_id
from dhtchat.core.sas import SAS_VERSION
from tests.daemons import (
    PASSPHRASE,
    REPO,
    DaemonProcess,
    DhtProcess,
    cli,
    make_contacts,
    new_identity,
    next_host,
)

pytestmark = pytest.mark.timeout(300)

CALL_SECONDS = 4.0


async def _daemon(tmp: Path, n: int, bootstrap: list[tuple[str, int]],
                  auto_connect: bool = True) -> Daemon:
    options = DaemonOptions(port=0, host=next_host(), bootstrap=bootstrap,
                            ice_addresses=["127.0.0.1"], auto_connect=auto_connect)
    daemon = Daemon(Profile(tmp / f"d{n}"),
                    SigningIdentity.from_seed(bytes([n + 60]) * 32), options)
    await daemon.start()
    return daemon


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _heard(call: Call | None) -> float:
    """Seconds of audio the call has received so far."""
    return call.sink.duration if call is not None and call.sink is not None else 0.0


def _run(tmp: Path, scenario: Callable[[Daemon, Daemon, Daemon], Awaitable[None]],
         auto_connect: bool = True) -> None:
    """Alice and Bob (contacts), Carol (a contact of both), on a small DHT."""
    async def main() -> None:
        first = await _daemon(tmp, 1, [])
        assert first.node is not None
        daemons = [first, *[await _daemon(tmp, n, [first.node.address], auto_connect)
                            for n in (2, 3, 4)]]
        alice, bob, carol = daemons[1], daemons[2], daemons[3]
        try:
            await _until(lambda: all(d.joined for d in daemons), 60, "joins")
            for x, y in ((alice, bob), (alice, carol), (bob, carol)):
                x.contacts.put(y.identity.public_key, name=f"d{daemons.index(y)}",
                               state="accepted")
                y.contacts.put(x.identity.public_key, name=f"d{daemons.index(x)}",
                               state="accepted")
                x.link_contact(y.identity.public_key)
                y.link_contact(x.identity.public_key)
            await scenario(alice, bob, carol)
        finally:
            await asyncio.gather(*(d.stop() for d in daemons))

    asyncio.run(main())


def test_tone_call_both_ways_with_equal_sas(tmp_path: Path) -> None:
    async def scenario(alice: Daemon, bob: Daemon, carol: Daemon) -> None:
        assert alice.calls is not None and bob.calls is not None and carol.calls is not None
        bob.calls.auto_answer = CallMedia("tone:1000", str(tmp_path / "bob-heard.wav"))
        dialled = time.monotonic()
        call = await alice.calls.place(bob.identity.public_key,
                                       CallMedia("tone:440", str(tmp_path / "alice-heard.wav")))
        await _until(lambda: call.machine.state == "active", 30, "the call to connect")
        assert call.sink is not None
        await _until(lambda: call.sink is not None and call.sink.first_frame_at is not None,
                     10, "the first audio frame")
        print(f"\ncall setup (dial to first audio frame): "
              f"{(time.monotonic() - dialled) * 1000:.0f} ms")
        bobs = bob.calls.current
        assert bobs is not None and bobs.machine.state == "active"
        await _until(lambda: bobs.sas is not None, 5, "Bob's SAS")
        assert call.sas is not None and call.sas == bobs.sas  # same words on both sides
        # A second caller gets "busy" while Bob talks.
        other = await carol.calls.place(bob.identity.public_key, CallMedia())
        await _until(lambda: other.machine.ended, 20, "the busy signal")
        assert other.machine.reason == "busy"
        await _until(lambda: min(_heard(call), _heard(bobs)) >= CALL_SECONDS,
                     CALL_SECONDS + 20, f"{CALL_SECONDS} s of audio both ways")
        stats = await alice.calls.stats(call)
        assert stats["packets_received"] > 0 and stats["rtt_ms"] is not None
        print(f"stats: {stats}")
        await alice.calls.hangup(call)
        await _until(lambda: bobs.machine.ended, 10, "Bob to see the hang-up")
        assert call.machine.reason == "hung up"
        assert bobs.machine.reason == "hung up by the contact"
        for path, tone in (("alice-heard.wav", 1000.0), ("bob-heard.wav", 440.0)):
            heard = dominant_frequency(tmp_path / path)
            duration = audio_duration(tmp_path / path)
            print(f"{path}: {heard:.0f} Hz, {duration:.2f} s")
            assert abs(heard - tone) < 15, (path, heard)
            assert duration >= 0.9 * CALL_SECONDS, (path, duration)
        log = bob.calls.log(10)
        assert [(c["direction"], c["reason"], c["missed"]) for c in log] == [
            ("incoming", "missed (busy)", True), ("incoming", "hung up by the contact", False)]

    _run(tmp_path, scenario)


def test_substituted_fingerprint_stops_the_call_before_audio(tmp_path: Path) -> None:
    """A fingerprint swapped in the answer: refused because Bob's identity did not sign it;
    and one that Bob's key did sign but that is not his certificate's: DTLS fails. Either
    way the call ends before one audio frame flows."""
    async def scenario(alice: Daemon, bob: Daemon, carol: Daemon) -> None:
        assert alice.calls is not None and bob.calls is not None and bob.messenger is not None
        bob.calls.auto_answer = CallMedia("tone:1000", str(tmp_path / "bob-heard.wav"))
        genuine = bob.messenger.send_call
        resign = False

        async def tampered(contact: bytes, action: str, call_id: bytes, *, sdp: str = "",
                           signature: bytes = b"", **kwargs: object) -> bool:
            if action == "accept":  # a man in the middle swaps the certificate fingerprint
                lines = sdp.split("\r\n")
                for i, line in enumerate(lines):
                    if line.startswith("a=fingerprint:sha-256 "):
                        digest = line.split(" ", 1)[1]
                        flipped = ("00" if digest[:2] != "00" else "11") + digest[2:]
                        lines[i] = "a=fingerprint:sha-256 " + flipped
                sdp = "\r\n".join(lines)
                if resign:  # as if Bob's own daemon announced a certificate it lacks
                    signature = bob.identity.sign(fingerprint_signed_bytes(
                        call_id, action, sdp_fingerprint(sdp)))
            return await genuine(contact, action, call_id, sdp=sdp, signature=signature,
                                 **kwargs)  # type: ignore[arg-type]

        bob.messenger.send_call = tampered  # type: ignore[method-assign]
        for resign in (False, True):
            call = await alice.calls.place(
                bob.identity.public_key,
                CallMedia("tone:440", str(tmp_path / f"alice-heard-{resign}.wav")))
            await _until(lambda: call.machine.ended, 60, "the call to fail")  # noqa: B023
            assert call.media_up_at is None  # no media connection came up
            expected = "DTLS handshake failed" if resign else "not signed by the contact"
            assert expected in call.machine.reason, call.machine.reason
            assert call.sink is not None and call.sink.frames == 0  # not one audio frame
            await _until(lambda: bob.calls.current is None, 20, "Bob's side to end")  # type: ignore[union-attr]

    _run(tmp_path, scenario)


def test_a_reveal_that_does_not_open_the_commitment_is_refused(tmp_path: Path) -> None:
    """Alice's daemon reveals a SAS nonce other than the one it committed to in the invite
    (as a caller in the middle who ground a better one after seeing Bob's nonce would):
    Bob's daemon refuses it, shows no SAS and ends the call for both."""
    async def scenario(alice: Daemon, bob: Daemon, carol: Daemon) -> None:
        assert alice.calls is not None and bob.calls is not None
        assert alice.messenger is not None
        bob.calls.auto_answer = CallMedia()
        genuine = alice.messenger.send_call
        revealed: list[bytes] = []

        async def tampered(contact: bytes, action: str, call_id: bytes, *,
                           nonce: bytes = b"", **kwargs: object) -> bool:
            if action == "nonce":
                revealed.append(nonce)
                nonce = bytes(16) if nonce != bytes(16) else b"\x01" * 16
            return await genuine(contact, action, call_id, nonce=nonce,
                                 **kwargs)  # type: ignore[arg-type]

        alice.messenger.send_call = tampered  # type: ignore[method-assign]
        call = await alice.calls.place(bob.identity.public_key, CallMedia())
        await _until(lambda: bob.calls.current is not None  # type: ignore[union-attr]
                     or any(c.machine.ended for c in bob.calls.calls.values()),  # type: ignore[union-attr]
                     20, "Bob to get the call")
        bobs = next(iter(bob.calls.calls.values()))
        await _until(lambda: bobs.machine.ended, 20, "Bob to refuse the reveal")
        assert revealed, "Alice's daemon never revealed"
        assert "does not open its commitment" in bobs.machine.reason, bobs.machine.reason
        assert bobs.sas is None  # no words are shown for a refused call
        await _until(lambda: call.machine.ended, 20, "Alice to see the hang-up")
        assert call.machine.reason == "hung up by the contact"
        assert bob.calls.log(1)[0]["reason"] == bobs.machine.reason

    _run(tmp_path, scenario)


def test_an_invite_of_the_older_sas_scheme_is_refused(tmp_path: Path) -> None:
    """Review finding: an older caller (one nonce, SAS v1) and this callee would finish the
    call with different words, which reads as a man in the middle. The callee refuses such
    an invite before it rings; a current invite to the same daemon rings."""
    async def scenario(alice: Daemon, bob: Daemon, carol: Daemon) -> None:
        assert alice.calls is not None and bob.calls is not None
        assert alice.messenger is not None
        # Alice's signals say what an older version's say: no SAS scheme (0). (Both daemons
        # share the module; Bob's refusal reads its own constant in dhtchat.app.calls.)
        vars(messenger_module)["SAS_VERSION"] = 0
        try:
            old = await alice.calls.place(bob.identity.public_key, CallMedia())
            await _until(lambda: bob.calls.refused_invites == 1, 20,  # type: ignore[union-attr]
                         "Bob to refuse the old invite")
            assert old.call_id not in bob.calls.calls and bob.calls.current is None
            await alice.calls.hangup(old)
        finally:
            vars(messenger_module)["SAS_VERSION"] = SAS_VERSION
        bob.calls.auto_answer = CallMedia()
        call = await alice.calls.place(bob.identity.public_key, CallMedia())
        await _until(lambda: call.machine.state == "active" and call.sas is not None, 30,
                     "the current call")
        await alice.calls.hangup(call)

    _run(tmp_path, scenario)


def test_verified_contact_whose_call_key_changes_is_flagged(tmp_path: Path) -> None:
    """Alice verifies Bob (his call fingerprint is pinned). Bob's call certificate for Alice
    stays the same on the next call; after it changes (a new device, or someone else) the
    call carries a loud warning and Bob is no longer verified."""
    async def scenario(alice: Daemon, bob: Daemon, carol: Daemon) -> None:
        assert alice.calls is not None and bob.calls is not None and bob.history is not None
        bob.calls.auto_answer = CallMedia()

        async def one_call() -> Call:
            assert alice.calls is not None
            call = await alice.calls.place(bob.identity.public_key, CallMedia())
            await _until(lambda: call.machine.state == "active" and call.sas is not None, 30,
                         "the call")
            await alice.calls.hangup(call)
            await _until(lambda: bob.calls.current is None, 10, "the end")  # type: ignore[union-attr]
            return call

        first = await one_call()
        fingerprint = first.remote_fingerprint
        alice.contacts.mark_verified(bob.identity.public_key, "bob", time.time(), fingerprint)
        second = await one_call()
        assert second.remote_fingerprint == fingerprint and not second.warning
        assert alice.contacts.verified_at(bob.identity.public_key) is not None
        with bob.history.transaction() as db:  # Bob's daemon gets a new call key
            db.connection.execute("DELETE FROM call_certificates")
        third = await one_call()
        assert third.remote_fingerprint != fingerprint
        assert "changed since you verified" in third.warning
        assert alice.contacts.verified_at(bob.identity.public_key) is None

    _run(tmp_path, scenario)


def test_decline_ring_timeout_and_a_contact_known_offline(tmp_path: Path) -> None:
    async def scenario(alice: Daemon, bob: Daemon, carol: Daemon) -> None:
        assert alice.calls is not None and bob.calls is not None
        call = await alice.calls.place(bob.identity.public_key, CallMedia())
        await _until(lambda: call.machine.state == "ringing", 20, "ringing")
        ringing = bob.calls.current
        assert ringing is not None
        await bob.calls.decline(ringing)
        await _until(lambda: call.machine.ended, 10, "the decline")
        assert call.machine.reason == "declined"

        call = await alice.calls.place(bob.identity.public_key, CallMedia())
        call.machine.ring_timeout = 1.0  # nobody answers
        await _until(lambda: bob.calls.current is not None, 10, "ringing at Bob")  # type: ignore[union-attr]
        await _until(lambda: call.machine.ended, 10, "the ring timeout")
        assert call.machine.reason == "no answer"
        assert bob.calls is not None
        await _until(lambda: bob.calls.current is None, 10, "Bob's side to stop ringing")  # type: ignore[union-attr]
        assert bob.calls.log(1)[0]["missed"] is True

        # Carol's daemon stops (it says goodbye): a call to her fails at once and says so,
        # well before the 30 s connection timeout.
        await carol.stop()
        link = alice.links[carol.identity.public_key]
        await _until(lambda: link.status == "offline" and not link.online
                     and link.presence is not None, 20, "Carol to be shown offline")
        dialled = time.monotonic()
        with pytest.raises(ConnectionError, match=r"is offline \(last seen .* ago\)"):
            await asyncio.wait_for(
                alice.calls.place(carol.identity.public_key, CallMedia()), 5.0)
        elapsed = time.monotonic() - dialled
        print(f"\ncall to an offline contact failed after {elapsed * 1000:.0f} ms")
        assert elapsed < 2.0
        assert alice.calls.current is None

    _run(tmp_path, scenario)


def test_cli_call_answer_verify_and_list(tmp_path: Path) -> None:
    """The command-line contract: `call` with a 440 Hz tone and `answer` with 1000 Hz, each
    recording to WAV; both print the same SAS; `call verify` and `call list`."""
    dht = DhtProcess(16)
    alice_id = new_identity(tmp_path / "alice")
    bob_id = new_identity(tmp_path / "bob")
    daemons = []
    try:
        for name in ("alice", "bob"):
            args = ["--port", "0", "--host", next_host(), "--ice-address", "127.0.0.1",
                    "--name", name.title()]
            for address in dht.bootstrap:
                args += ["--bootstrap", address]
            daemons.append(DaemonProcess(tmp_path / name, args))
        alice, bob = daemons
        alice.wait_ready()
        bob.wait_ready()
        make_contacts(alice, alice_id, bob, bob_id)
        env = dict(os.environ, DHTCHAT_PASSPHRASE=PASSPHRASE, PYTHONPATH=str(REPO))
        answer = subprocess.Popen(
            [sys.executable, "-m", "dhtchat", "--profile", str(bob.profile), "answer",
             "--audio-in", "tone:1000", "--audio-out", str(tmp_path / "bob-heard.wav")],
            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            stdin=subprocess.DEVNULL)
        # No wait needed: `answer` also takes a call that was already ringing when it started.
        call = cli(alice.profile, "call", "Bob", "--audio-in", "tone:440", "--audio-out",
                   str(tmp_path / "alice-heard.wav"), "--duration", str(CALL_SECONDS),
                   timeout=120)
        _, answered = answer.communicate(timeout=60)
        assert answer.returncode == 0, answered
        print("\n" + call.stderr + answered)
        sas_lines = [[line for line in text.splitlines() if line.startswith("SAS: ")]
                     for text in (call.stderr, answered)]
        assert sas_lines[0] and sas_lines[0] == sas_lines[1]
        assert "call ended: hung up" in call.stderr
        for path, tone in (("alice-heard.wav", 1000.0), ("bob-heard.wav", 440.0)):
            assert abs(dominant_frequency(tmp_path / path) - tone) < 15
            assert audio_duration(tmp_path / path) >= 0.9 * CALL_SECONDS
        words = sas_lines[0][0].split("SAS: ", 1)[1].split("  (")[0]
        wrong = cli(alice.profile, "call", "verify", "Bob", "--sas", "apple apple apple",
                    check=False)
        if words != "apple apple apple":
            assert wrong.returncode == 2 and "do not match" in wrong.stderr
        cli(alice.profile, "call", "verify", "Bob", "--sas", words)
        rows = json.loads(cli(alice.profile, "contact", "list", "--json").stdout)
        assert rows[0]["verified"]
        listed = json.loads(cli(bob.profile, "call", "list", "--json").stdout)
        assert listed[0]["direction"] == "incoming"
        assert listed[0]["reason"] == "hung up by the contact"
    finally:
        for daemon in daemons:
            daemon.stop()
        dht.stop()


@pytest.mark.parametrize("size", [3, 5])
def test_group_call_mesh(tmp_path: Path, size: int) -> None:
    """A full-mesh group call of 3 and of 5: everyone sends its own tone and records each
    leg; every participant hears every other participant's tone, over pairwise
    connections each with its own SAS."""
    tones = [300.0, 500.0, 700.0, 900.0, 1100.0][:size]

    async def main() -> None:
        first = await _daemon(tmp_path, 1, [])
        assert first.node is not None
        people = [await _daemon(tmp_path, n, [first.node.address]) for n in range(2, size + 2)]
        everyone = [first, *people]
        try:
            await _until(lambda: all(d.joined for d in everyone), 60, "joins")
            for i, x in enumerate(people):
                for y in people[i + 1:]:
                    x.contacts.put(y.identity.public_key, name=f"p{people.index(y)}",
                                   state="accepted")
                    y.contacts.put(x.identity.public_key, name=f"p{i}", state="accepted")
                    x.link_contact(y.identity.public_key)
                    y.link_contact(x.identity.public_key)
            for i, person in enumerate(people[1:], start=1):
                assert person.calls is not None
                person.calls.auto_answer = CallMedia(f"tone:{tones[i]:.0f}",
                                                     str(tmp_path / f"p{i}.wav"))
            host = people[0]
            assert host.calls is not None
            await host.calls.place_group([p.identity.public_key for p in people[1:]],
                                         CallMedia(f"tone:{tones[0]:.0f}",
                                                   str(tmp_path / "p0.wav")))

            def meshed() -> bool:
                for person in people:
                    assert person.calls is not None
                    legs = [c for c in person.calls.calls.values()
                            if c.conference and c.machine.state == "active"]
                    if len(legs) != size - 1:
                        return False
                return True
            started = time.monotonic()
            try:
                await _until(meshed, 60, "every leg of the mesh")
            except AssertionError:
                keys = [p.identity.public_key for p in people]
                for n, person in enumerate(people):
                    assert person.calls is not None
                    print(f"p{n}: " + ", ".join(
                        f"{c.machine.direction[:3]} p{keys.index(c.contact)} "
                        f"{c.machine.state} {c.machine.reason}"
                        for c in person.calls.calls.values()))
                raise
            print(f"\n{size}-party mesh: all {size * (size - 1) // 2} legs active in "
                  f"{time.monotonic() - started:.1f} s")
            def carried() -> bool:
                for person in people:
                    assert person.calls is not None
                    if any(_heard(c) < CALL_SECONDS for c in person.calls.calls.values()
                           if c.conference and c.machine.state == "active"):
                        return False
                return True
            await _until(carried, CALL_SECONDS + 40, f"{CALL_SECONDS} s of audio on every leg")
            legs = list(host.calls.legs(next(iter(host.calls.calls.values())).conference))
            for leg in legs:  # both ends of each leg show the same SAS
                peer = next(p for p in people if p.identity.public_key == leg.contact)
                assert peer.calls is not None
                theirs = next(c for c in peer.calls.calls.values() if c.call_id == leg.call_id)
                assert leg.sas is not None and leg.sas == theirs.sas
            await host.calls.hangup(legs[0])  # the host leaves: its legs end
            for person in people[1:]:
                assert person.calls is not None
                for leg in list(person.calls.calls.values()):
                    await person.calls.hangup(leg)
            durations: list[float] = []
            for i in range(size):
                for j, other in enumerate(people):
                    if i == j:
                        continue
                    tag = encode_user_id(other.identity.public_key)[:12]
                    path = tmp_path / f"p{i}-{tag}.wav"
                    heard = dominant_frequency(path)
                    durations.append(audio_duration(path))
                    assert abs(heard - tones[j]) < 15, (i, j, heard)
                    # Every leg carried sound for most of the call (20 connections' Opus on
                    # 2 cores may lose a little under load; the 1:1 test holds 90 %).
                    assert durations[-1] >= 0.5 * CALL_SECONDS, (i, j, durations[-1])
            print(f"received per leg: {min(durations):.2f}-{max(durations):.2f} s of "
                  f"{CALL_SECONDS:.0f} s")
        finally:
            await asyncio.gather(*(d.stop() for d in everyone))

    asyncio.run(main())


def _rms(path: Path, start: float, end: float) -> float:
    """Root mean square of a recording between two times (s), full scale 1.0."""
    with av.open(str(path)) as container:
        chunks = [frame.to_ndarray().astype(np.float64).ravel()
                  for frame in container.decode(audio=0)]
        rate = container.streams.audio[0].rate
    samples = np.concatenate(chunks) / 32768.0
    channels = 2
    segment = samples[int(start * rate) * channels:int(end * rate) * channels]
    return float(np.sqrt(np.mean(segment ** 2))) if segment.size else 0.0


def test_video_call_mute_and_hold(tmp_path: Path) -> None:
    """A video call with a test picture: video frames arrive (VP8 or H.264); mute sends
    silence; hold stops the picture and tells the contact; resume brings both back."""
    async def scenario(alice: Daemon, bob: Daemon, carol: Daemon) -> None:
        assert alice.calls is not None and bob.calls is not None
        bob.calls.auto_answer = CallMedia("tone:1000", str(tmp_path / "bob-heard.wav"),
                                          "lavfi:testsrc=size=320x240:rate=15")
        call = await alice.calls.place(
            bob.identity.public_key,
            CallMedia("tone:440", str(tmp_path / "alice-heard.wav"),
                      "lavfi:testsrc=size=320x240:rate=15"), video=True)
        await _until(lambda: call.machine.state == "active", 30, "the call")
        bobs = bob.calls.current
        assert bobs is not None
        await _until(lambda: call.video_frames > 10 and bobs.video_frames > 10, 20,
                     "video frames both ways")
        codecs = {t.sender.track.kind: t for t in call.pc.getTransceivers()  # type: ignore[union-attr]
                  if t.sender.track is not None}
        assert "video" in codecs
        assert bobs.sink is not None
        await _until(lambda: _heard(bobs) >= 1.5, 10, "Bob to hear the tone")
        muted_at = bobs.sink.duration  # position in Bob's recording
        await alice.calls.set_mute(call, True)
        await _until(lambda: _heard(bobs) >= muted_at + 2.0, 10, "2 s of muted audio")
        unmuted_at = bobs.sink.duration
        await alice.calls.set_mute(call, False)
        await alice.calls.set_hold(call, True)
        await _until(lambda: bobs.remote_held, 5, "Bob to see the hold")
        frames = bobs.video_frames
        held_at = bobs.sink.duration  # held audio is silence, still flowing: a clock
        await _until(lambda: _heard(bobs) >= held_at + 1.5, 10, "1.5 s on hold")
        assert bobs.video_frames - frames <= 3  # the picture stopped (a frame in flight)
        await alice.calls.set_hold(call, False)
        await _until(lambda: not bobs.remote_held and bobs.video_frames > frames + 5, 10,
                     "the picture after resume")
        await alice.calls.hangup(call)
        await _until(lambda: bobs.machine.ended, 10, "the hang-up")
        path = tmp_path / "bob-heard.wav"
        loud = _rms(path, muted_at - 1.0, muted_at - 0.1)
        quiet = _rms(path, muted_at + 0.4, unmuted_at - 0.1)
        print(f"\nBob heard: rms {loud:.3f} before mute, {quiet:.4f} while muted; "
              f"video frames {bobs.video_frames} (Bob), {call.video_frames} (Alice)")
        assert loud > 0.05 and quiet < 0.01

    _run(tmp_path, scenario)


def test_call_to_a_contact_not_connected_goes_through_the_dht(tmp_path: Path) -> None:
    """Without a data connection (no auto-connect), the call opens one through the DHT
    rendezvous (the offer reaches Bob's daemon by its DHT listen) and then rings."""
    async def scenario(alice: Daemon, bob: Daemon, carol: Daemon) -> None:
        assert alice.calls is not None and bob.calls is not None
        link = alice.links[bob.identity.public_key]
        await _until(lambda: link.online, 30, "Bob's presence")  # reachable, yet
        assert link.status != "connected"  # no automatic connection
        bob.calls.auto_answer = CallMedia("tone:1000", str(tmp_path / "bob-heard.wav"))
        call = await alice.calls.place(bob.identity.public_key,
                                       CallMedia("tone:440", str(tmp_path / "alice-heard.wav")))
        assert link.channel is not None  # the data connection the call opened
        await _until(lambda: call.machine.state == "active", 30, "the call")
        await _until(lambda: _heard(call) >= 2.0, 15, "2 s of Bob's tone")
        await alice.calls.hangup(call)
        assert abs(dominant_frequency(tmp_path / "alice-heard.wav") - 1000.0) < 15

    _run(tmp_path, scenario, auto_connect=False)
