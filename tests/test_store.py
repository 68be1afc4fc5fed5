"""The store's typed writes (dhtchat/store/history.py): what a Transaction writes is what
History reads next, also through its cache of conversation rows, and a rollback leaves
nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from dhtchat.store.history import History, NewOutboxRow, NewOutgoingRow

ALICE = b"a" * 32


def _history(tmp_path: Path) -> History:
    return History(tmp_path / "messages.db", bytes(range(32)))


def test_conversation_updates_set_only_the_named_columns(tmp_path: Path) -> None:
    history = _history(tmp_path)
    assert history.conversation(ALICE).next_out_seq == 1  # (now cached)
    with history.transaction() as db:
        db.update_conversation(ALICE, next_out_seq=5, session="{}")
    row = history.conversation(ALICE)
    assert (row.next_out_seq, row.next_in_seq, row.timer, row.session) == (5, 1, 0, "{}")
    with history.transaction() as db:
        db.update_conversation(ALICE, timer=0)  # 0 is a value, None means unchanged
        db.update_conversation(ALICE, next_in_seq=None)
    assert history.conversation(ALICE).session == "{}"
    with history.transaction() as db:
        db.clear_session(ALICE)
    assert history.conversation(ALICE).session is None
    history.close()
    assert _history(tmp_path).conversation(ALICE).next_out_seq == 5  # committed, not cached


def test_an_ack_is_read_back_through_the_cached_row(tmp_path: Path) -> None:
    history = _history(tmp_path)
    with history.transaction() as db:
        db.add_outbox_rows([NewOutboxRow(ALICE, seq, b"p%d" % seq, None, 0.0)
                            for seq in (1, 2, 3)])
        db.add_outgoing_rows([NewOutgoingRow(b"%016d" % seq, ALICE, seq, 0.0, "hi", 0, "text")
                              for seq in (1, 2, 3)])
        db.update_conversation(ALICE, next_out_seq=4)
    with history.transaction() as db:
        db.set_frames(ALICE, [(1, b"f1")])
        db.set_frames_of({(ALICE, 2): b"f2"})
        db.set_mailbox_slot(ALICE, 1, 7)
    assert [(e.seq, e.frame, e.mailbox_index) for e in history.outbox(ALICE)] == [
        (1, b"f1", 7), (2, b"f2", None), (3, None, None)]
    assert history.conversation(ALICE).acked_out_seq == 0  # cached
    with history.transaction() as db:
        slots = db.acknowledge(ALICE, 0, 2, now=0.0)
    assert slots == [(7, 2)]  # (slot, frame length) to overwrite
    assert history.conversation(ALICE).acked_out_seq == 2
    assert [e.seq for e in history.outbox(ALICE)] == [3]
    delivered = [m.delivered for m in (history.message(b"%016d" % s) for s in (1, 2, 3))
                 if m is not None]
    assert delivered == [True, True, False]
    history.close()


def test_a_rolled_back_write_is_not_read_back(tmp_path: Path) -> None:
    history = _history(tmp_path)
    assert history.conversation(ALICE).next_out_seq == 1  # the row exists
    with pytest.raises(RuntimeError), history.transaction() as db:
        db.update_conversation(ALICE, next_out_seq=9)
        assert history.conversation(ALICE).next_out_seq == 9  # read inside: cached
        raise RuntimeError
    assert history.conversation(ALICE).next_out_seq == 1
    history.close()
