"""Discrete-event simulator running the real sans-IO DHT core on virtual time."""
