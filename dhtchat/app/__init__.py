"""Application layer: profile and keystore, the command-line interface and the demo."""
