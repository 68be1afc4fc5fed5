"""Persistence: every SQL statement of the daemon, behind typed methods and dataclasses.

The app layer above passes and receives typed values (frozen dataclasses, ints, bytes); it
never sees a row tuple, a cursor or SQL. Writes that must commit together go through one
:class:`dhtchat.store.history.Transaction`."""
