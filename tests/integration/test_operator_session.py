"""The operator's HTTP session to the API server (`controller.handlers.login`): its requests in flight are
bounded, its watches are not, so no number of watched namespaces leaves a patch without a connection. Against
a real aiohttp server on 127.0.0.1 that counts the requests it is answering."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from mlworkflow.controller.handlers import bounded_requests


async def serve(in_flight: list[int], peak: list[int], release: asyncio.Event) -> web.AppRunner:
    async def answer(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") == "true":  # a watch streams until the test ends
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b'{"type": "ADDED"}\n')
            await release.wait()
            return response
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        await asyncio.sleep(0.05)
        in_flight[0] -= 1
        return web.json_response({"kind": "Status"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def requests_with_watches_open(limit: int, watches: int, requests: int) -> int:
    in_flight, peak, release = [0], [0], asyncio.Event()
    runner = await serve(in_flight, peak, release)
    port = runner.addresses[0][1]
    connector = aiohttp.TCPConnector(limit=0)  # as the operator's: watches unbounded
    async with aiohttp.ClientSession(connector=connector, middlewares=(bounded_requests(limit),)) as session:
        streams = [
            await session.get(f"http://127.0.0.1:{port}/w{i}", params={"watch": "true"})
            for i in range(watches)
        ]
        for stream in streams:  # every watch is streaming, each holding its connection
            assert await stream.content.readline() == b'{"type": "ADDED"}\n'

        async def get(i: int) -> dict[str, str]:
            async with session.get(f"http://127.0.0.1:{port}/r{i}") as response:
                return await response.json()

        answers = await asyncio.wait_for(asyncio.gather(*(get(i) for i in range(requests))), timeout=30)
        assert answers == [{"kind": "Status"}] * requests
        release.set()
        for stream in streams:
            stream.close()
    await runner.cleanup()
    return peak[0]


def test_requests_in_flight_are_bounded_and_watches_never_take_their_turns() -> None:
    # More watches streaming than the bound: with the bound on connections instead, no request would get one.
    peak = asyncio.run(requests_with_watches_open(limit=3, watches=5, requests=40))
    assert peak == 3
