"""The desktop client's screens, one module each; they talk to the daemon only through
:class:`dhtchat.ui.client.UiClient` and read :class:`dhtchat.ui.state.ChatState`.

Adding a screen (calls, groups, files, settings...): subclass
:class:`dhtchat.ui.screens.base.ApiScreen`; ``self.ui.client`` makes the calls (typed helpers,
or ``call(method, params)`` for any method of docs/api.md), wrap them in
:func:`dhtchat.ui.screens.base.guarded` so a failure becomes a message; override ``api_event``
(or ``api_events`` for one redraw per batch) to follow the daemon's events, which the app has
already applied to ``self.ui.state``; give every action a ``Binding`` with a description (the
footer shows it) and say states in words or symbols, not colour alone; render text others
chose with :mod:`dhtchat.ui.format` (terminal-safe, never markup). Open it from a binding of
the conversations screen with ``self.app.push_screen``.
"""
