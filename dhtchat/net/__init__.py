"""asyncio network drivers around the sans-IO core."""
