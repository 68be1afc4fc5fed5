"""Sans-IO core of dhtchat: pure state machines with no I/O, clocks or ambient randomness.

Time always comes in as a ``now`` argument (seconds, float) and randomness through an
injected :class:`random.Random` or explicit seed bytes, so the same code runs under the
asyncio UDP driver, in unit tests with a manual clock and in the discrete-event simulator.
"""
