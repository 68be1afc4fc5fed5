"""dhtchat: a serverless, end-to-end encrypted messenger on a hardened Kademlia DHT."""

__version__ = "0.1.0"
