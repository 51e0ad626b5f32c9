"""Stream set-up and inspection for scripts/demo (nats-py).

create URL FILE [FILE ...]                   create streams if missing, each from a
                                             JSON file of the JetStream API's stream
                                             configuration (config/streams/)
wait URL SECONDS NAME=COUNT [...]            wait until streams hold at least COUNT
show URL NAME                                print a stream's messages, one line each
kv URL BUCKET                                print a KV bucket's documents
"""

import asyncio
import json
import sys
import time

import nats
from nats.js.api import StreamConfig


async def main(command, url, *args):
    client = await nats.connect(url)
    js = client.jetstream()
    if command == "create":
        for path in args:
            with open(path) as file:
                await js.add_stream(StreamConfig.from_response(json.load(file)))
    elif command == "wait":
        deadline = time.monotonic() + float(args[0])
        wanted = dict(arg.split("=") for arg in args[1:])
        while True:
            counts = {}
            for name in wanted:
                try:
                    counts[name] = (await js.stream_info(name)).state.messages
                except Exception:
                    counts[name] = 0
            if all(counts[n] >= int(c) for n, c in wanted.items()):
                break
            if time.monotonic() > deadline:
                sys.exit(f"timed out waiting for {wanted}, have {counts}")
            await asyncio.sleep(0.2)
    elif command == "show":
        name = args[0]
        info = await js.stream_info(name)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(name, seq)
            headers = message.headers or {}
            print(
                f"  {seq:>3}  {message.subject:<36} {headers.get('Jetline-Event-Type', ''):<24}"
                f" v{headers.get('Jetline-Schema-Version', '?')}  id={headers.get('Nats-Msg-Id', '')}"
                f"  {headers.get('Content-Type', '')}"
            )
    elif command == "kv":
        kv = await js.key_value(args[0])
        for key in sorted(await kv.keys()):
            entry = await kv.get(key)
            print(f"  {key:<12} {entry.value.decode()}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
