"""Tandem Python SDK quickstart: sync and async generation against a running `tandem serve`.

    tandem serve &                      # prints `router grpc 127.0.0.1:PORT`
    python quickstart.py 127.0.0.1:PORT
"""
from __future__ import annotations

import asyncio
import sys

import tandem_client as tc


def sync_demo(address: str) -> None:
    with tc.Client(address, timeout=120) as client:
        info = client.model_info()
        print(f"model {info.model} ({info.architecture}), context {info.max_context_tokens}, "
              f"ready: {client.health().value}")

        # Streaming: chunks as they are generated, then the final message.
        stream = client.generate_stream(
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24)
        for chunk in stream:
            print(chunk.text, end="", flush=True)
        final = stream.final
        print(f"\n[{final.finish_reason.value}, {final.usage.prompt_tokens} prompt + "
              f"{final.usage.completion_tokens} generated tokens, first token after "
              f"{final.timings.first_token_seconds:.2f} s]")

        # Whole completion, seeded sampling, a stop string.
        done = client.generate("Once upon a time", max_tokens=32, temperature=0.8, seed=42,
                               stop=["\n"])
        print(repr(done.text), done.finish_reason.value)

        # Typed errors: the message names the offending field.
        try:
            client.generate("", max_tokens=4)
        except tc.InvalidArgumentError as e:
            print("refused:", e.message)


async def async_demo(address: str) -> None:
    async with tc.AsyncClient(address, timeout=120) as client:
        prompts = ["The sky is", "Water boils at", "def add(a, b):"]

        async def one(prompt: str) -> str:
            text = ""
            async for chunk in client.generate_stream(prompt, max_tokens=12):
                text += chunk.text
            return prompt + text

        for text in await asyncio.gather(*(one(p) for p in prompts)):
            print("---", text, sep="\n")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} HOST:PORT")
    sync_demo(sys.argv[1])
    asyncio.run(async_demo(sys.argv[1]))


if __name__ == "__main__":
    main()
