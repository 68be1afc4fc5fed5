"""Talk to the demo contact of ``dhtchat demo`` from your own code, through the seam a front
end uses: :func:`dhtchat.app.demo.demo_network` starts a loopback DHT and DemoBot (a real
daemon driven by a bot through its API) and hands over an empty user profile.

Here the user's daemon runs in this process (``start_user_daemon``); a front end could as
well start ``dhtchat --profile PROFILE daemon *setup.daemon_args``. Everything below goes
through the user's daemon's JSON-RPC API. Run: ``python examples/demo_conversation.py``
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from dhtchat.app.demo import demo_network
from dhtchat.app.rpc import call


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with demo_network(Path(tmp), nodes=8, say=lambda _: None) as demo:
            setup = demo.setup
            print(f"DemoBot is {setup.bot_id}; your profile is "
                  f"{setup.user_profile.relative_to(tmp)}")
            daemon = await demo.start_user_daemon()

            async def api(method: str, **params: Any) -> Any:
                return await call(daemon.socket_path, method, params, 60)

            await api("contact.request", id=setup.bot_id, message="hi DemoBot")
            deadline = time.monotonic() + 20
            while (await api("contact.list"))[0]["state"] != "accepted":
                if time.monotonic() > deadline:
                    raise SystemExit("FAILED: DemoBot did not accept the request")
                await asyncio.sleep(0.1)
            print(f"{setup.bot_name} accepted the request")
            sent = await api("message.send", to=setup.bot_name, text="how are you?",
                             wait=True, timeout=20)
            print(f"'how are you?' delivered: {sent['delivered']}")
            answers: list[str] = []
            while not any("how are you?" in text for text in answers):
                if time.monotonic() > deadline + 20:
                    raise SystemExit("FAILED: DemoBot did not answer")
                answers += [m["text"] for m in await api("message.receive", wait=5)
                            if m["from"] == setup.bot_id and m["kind"] == "text"]
            print(f"DemoBot answered: {next(t for t in answers if 'how are you?' in t)[:40]!r}")
            print("OK: the demo contact accepted and answered, through the daemon's API")


if __name__ == "__main__":
    asyncio.run(main())
