"""CI's short run of benchmarks/fuzz.py: every parser target takes a few thousand mutated
inputs (seeded from real encodings) and raises nothing but its own documented error."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dhtchat_fuzz", ROOT / "benchmarks" / "fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dhtchat_fuzz"] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load()
TARGETS = fuzz.targets()


EVERY_PARSER = {"datagram", "node", "record", "contact_request", "presence", "signal", "sdp",
                "stun", "mailbox", "payload", "group", "call", "session", "file_chunk", "rpc",
                "identity", "lan_announce", "onion"}


def test_ci_runs_every_one_of_the_18_targets_each_with_seeds() -> None:
    assert set(TARGETS) == EVERY_PARSER
    assert all(target.seeds for target in TARGETS.values())


@pytest.mark.parametrize("name", sorted(EVERY_PARSER))
def test_target_survives_mutated_inputs(name: str) -> None:
    result = fuzz.run_random(TARGETS[name], 3000, seed=11)
    assert result.inputs == 3000
    assert result.failures == 0, "\n".join(result.first_failures)


def test_an_unexpected_exception_in_a_parser_counts_as_a_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes) -> None:
        raise ValueError("injected")

    monkeypatch.setattr(fuzz, "decode", broken)
    result = fuzz.run_random(TARGETS["datagram"], 200, seed=1)
    assert result.failures == 200 and "injected" in result.first_failures[0]
