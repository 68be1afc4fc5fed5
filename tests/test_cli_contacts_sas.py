"""The daemon's side of comparing SAS words (``call.verify``), in-process over a real
loopback DHT and a real call: words that do not match are a typo until the user says they
differ; only ``differ`` marks the call suspicious (``call.list``) and removes the verified
mark."""

from __future__ import annotations

from pathlib import Path

import pytest

from dhtchat.app.calls import CallMedia
from dhtchat.app.daemon import Daemon
from dhtchat.app.rpc import INVALID_PARAMS, RpcError
from dhtchat.core.identity import encode_user_id
from tests.test_calls import _run, _until

pytestmark = pytest.mark.timeout(300)


def test_only_an_explicit_differ_marks_the_call(tmp_path: Path) -> None:
    async def scenario(alice: Daemon, bob: Daemon, carol: Daemon) -> None:
        bob.calls.auto_answer = CallMedia()
        call = await alice.calls.place(bob.identity.public_key, CallMedia())
        await _until(lambda: call.machine.state == "active" and call.sas is not None, 30,
                     "the call and its SAS")
        assert call.sas is not None
        bob_id = encode_user_id(bob.identity.public_key)
        words = call.sas.text.split()
        wrong = " ".join(reversed(words)) if words != words[::-1] else "salmon truck crab"
        with pytest.raises(RpcError) as typo:
            await alice.api.call("call.verify", {"contact": bob_id, "sas": wrong})
        assert typo.value.code == INVALID_PARAMS and "typo" in typo.value.message
        assert "middle" not in typo.value.message
        assert alice.contacts.verified_at(bob.identity.public_key) is None
        verified = await alice.api.call("call.verify", {"contact": bob_id,
                                                        "sas": call.sas.text})
        assert verified["verified"] is True  # type: ignore[index]
        assert alice.contacts.verified_at(bob.identity.public_key) is not None

        differ = await alice.api.call("call.verify", {"contact": bob_id, "differ": True})
        assert differ["suspicious"] is True and differ["verified"] is False  # type: ignore[index]
        assert alice.contacts.verified_at(bob.identity.public_key) is None
        await alice.calls.hangup(call)
        await _until(lambda: call.machine.ended, 10, "the hang-up")
        log = await alice.api.call("call.list", {})
        assert isinstance(log, list)
        row = next(r for r in log if r["id"] == call.call_id.hex())
        assert row["suspicious"] is True
        assert all(not r["suspicious"] for r in log if r["id"] != call.call_id.hex())

    _run(tmp_path, scenario)
