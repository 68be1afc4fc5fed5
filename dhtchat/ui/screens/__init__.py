"""The desktop client's screens, one module each; they talk to the daemon only through
:class:`dhtchat.ui.client.UiClient` and read :class:`dhtchat.ui.state.ChatState`."""
