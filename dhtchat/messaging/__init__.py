"""End-to-end messaging: X3DH + Double Ratchet sessions (:mod:`dhtchat.messaging.session`)."""
