"""A rate-limited HTTP API, driven through `@opmap` with httpx in thread, async and process mode.

The server runs in its own process (this script with ``--serve``): a small asyncio
HTTP/1.1 server with keep-alive that enforces `--quota` accepted requests per rolling
second and answers the rest ``429 Too Many Requests`` with ``Retry-After: 1``. With
`--flaky P` the primary variant also fails a fraction P of its requests with 503 (with
``Retry-After`` only under `--flaky-retry-after`). Arrivals are stamped when the server
reads the request, so bunching by the OS scheduler shows as it would on a real service.

The client maps `--items` items over `GET /value?item=N&variant=...` with
``rate_limit = --limit`` (default: 25% under the quota), ``workers=16``,
``arg_fallback="variant"`` (primary, then backup) and retries on 429/503. Per mode it
prints: items right, requests answered 429 (and 503), throughput as a fraction of the
quota, how often backpressure paused the limit, and the wall time against the ideals
bound by the quota and by the limit (``(items - 1) / rate``). Process mode's wall
includes starting 16 workers that each import httpx (seconds on 2 busy cores), so the
time to the first request and the span of sending are shown apart. `--no-backpressure`
measures the behaviour before it (``rate_limit_backpressure=False``).

The unknown-quota run (issue 18): ``--auto`` maps with ``rate_limit="auto"`` (AIMD or
CUBIC with `--algorithm`), and ``--change-to 20`` drops the quota to 20/s `--change-at`
seconds after the first accepted request, without telling anyone. Per mode it prints,
over the first `--seconds` after the first request: the requests accepted as a fraction
of what the quota allowed, the share answered 429, and items right; ``--plot out.png``
saves the rate over time (from ``rate_limit_changed`` events) against the quota.

    python benchmarks/scenario_http.py [--modes thread,async,process] [--items 300]
        [--quota 40] [--limit 30] [--workers 16] [--flaky 0.0] [--flaky-retry-after]
        [--runs 1] [--no-backpressure]
    python benchmarks/scenario_http.py --auto --change-to 20 --items 320 [--algorithm aimd]
        [--plot rate.png] [--burst 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import subprocess
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from opero import opmap

# --- the server -------------------------------------------------------------------


class QuotaServer:
    """The API's state: a rolling window of accepted arrivals, and what it answered."""

    def __init__(
        self, quota: int, flaky: float, flaky_retry_after: bool, change: tuple[int, float]
    ) -> None:
        self.first_quota = quota
        self.change = change  # (quota after, seconds after the first request): --change-to
        self.flaky = flaky
        self.flaky_retry_after = flaky_retry_after
        self.random = random.Random(18)  # the same flaky answers in every run
        self.reset()

    def reset(self) -> None:
        self.window: collections.deque[float] = collections.deque()
        self.quota = self.first_quota
        self.arrivals: list[tuple[float, int]] = []  # (time, status): the run's timeline
        self.counts: dict[str, float] = {
            "accepted": 0,
            "throttled": 0,
            "flaky": 0,
            "first": 0.0,
            "last": 0.0,
        }

    def answer(self, target: str) -> tuple[int, dict[str, str], bytes]:
        """Status, extra headers and body for one GET of `target`."""
        url = urlsplit(target)
        if url.path == "/stats":
            return 200, {}, json.dumps({**self.counts, "arrivals": self.arrivals}).encode()
        if url.path == "/reset":
            self.reset()
            return 200, {}, b"{}"
        query = parse_qs(url.query)
        now = time.monotonic()
        while self.window and self.window[0] <= now - 1.0:
            self.window.popleft()
        after, at = self.change
        if after and self.counts["first"] and now - self.counts["first"] >= at:
            self.quota = after  # the provider changed its quota, and said nothing
        if len(self.window) >= self.quota:  # rejected requests do not count against it
            self.counts["throttled"] += 1
            self.arrivals.append((now, 429))
            return 429, {"Retry-After": "1"}, b"{}"
        self.arrivals.append((now, 200))
        self.window.append(now)
        self.counts["first"] = self.counts["first"] or now  # time.monotonic is system-wide
        self.counts["last"] = now
        if query.get("variant") == ["primary"] and self.random.random() < self.flaky:
            self.counts["flaky"] += 1
            return 503, ({"Retry-After": "1"} if self.flaky_retry_after else {}), b"{}"
        self.counts["accepted"] += 1
        item = int(query["item"][0])
        return 200, {}, json.dumps({"item": item, "value": item * item}).encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One keep-alive connection: GET requests without bodies, one after another."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode("latin-1")
                status, headers, body = self.answer(target)
                lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
                lines += [f"{name}: {value}" for name, value in headers.items()]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def serve(
    quota: int, flaky: float, flaky_retry_after: bool, change: tuple[int, float]
) -> None:
    state = QuotaServer(quota, flaky, flaky_retry_after, change)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0, backlog=256)
    print(server.sockets[0].getsockname()[1], flush=True)  # the parent reads the port
    async with server:
        await server.serve_forever()


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, __file__, "--serve", "--quota", str(args.quota)]
    command += ["--flaky", str(args.flaky)]
    command += ["--change-to", str(args.change_to), "--change-at", str(args.change_at)]
    if args.flaky_retry_after:
        command.append("--flaky-retry-after")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return process, f"http://127.0.0.1:{port}"


# --- the client ---------------------------------------------------------------------

VARIANTS = ("primary", "backup")
_clients: dict[Any, Any] = {}  # one httpx client per process (sync) or event loop (async)


def throttled_or_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (429, 503)


def fetch(item: int, base: str, variant: str = "primary") -> int:
    client = _clients.get("sync")
    if client is None:
        client = _clients["sync"] = httpx.Client(base_url=base, timeout=30)
    response = client.get("/value", params={"item": item, "variant": variant})
    response.raise_for_status()
    return int(response.json()["value"])


async def afetch(item: int, base: str, variant: str = "primary") -> int:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = httpx.AsyncClient(base_url=base, timeout=30)
    response = await client.get("/value", params={"item": item, "variant": variant})
    response.raise_for_status()
    return int(response.json()["value"])


def close_clients() -> None:
    for key, client in list(_clients.items()):
        if key == "sync":
            client.close()
        # An AsyncClient's loop is closed by now: its sockets go with the object.
    _clients.clear()


def run_mode(mode: str, args: argparse.Namespace, base: str) -> dict[str, float]:
    """Map every item once in `mode`; what came back and how long it took."""
    pauses: list[Any] = []  # rate_limit_paused events (process mode: delivered here)
    rates: list[tuple[float, float]] = []  # (time.time(), rate) of rate_limit_changed

    def listen(event: Any) -> None:
        if event.kind == "rate_limit_paused":
            pauses.append(event)
        elif event.kind == "rate_limit_changed":
            rates.append((event.time, event.rate))

    options: dict[str, Any] = {
        "mode": mode,
        "workers": args.workers,
        "rate_limit": "auto" if args.auto else args.limit,
        "rate_limit_backpressure": not args.no_backpressure,
        "arg_fallback": "variant",
        "retries": 6,
        "retry_on": throttled_or_unavailable,
        "min_delay": 0.05,
        "max_delay": 5.0,
        "cache": False,
        "progress": False,
        "return_exceptions": True,
        "on_event": listen,
    }
    if args.auto and args.limit_max:
        options["rate_limit_max"] = args.limit_max
    if args.burst > 1:
        options["rate_limit_burst"] = args.burst
    items = list(range(args.items))
    mapped = opmap(**options)(afetch if mode == "async" else fetch)
    started, clock = time.monotonic(), time.time()
    if mode == "async":
        results = asyncio.run(mapped(items, base, variant=list(VARIANTS)))
    else:
        results = mapped(items, base, variant=list(VARIANTS))
    wall = time.monotonic() - started
    close_clients()  # and leave none behind: process mode pickles `_clients` by value
    right = sum(result == item * item for item, result in zip(items, results, strict=True))
    return {
        "right": right,
        "wall": wall,
        "started": started,
        "pauses": len(pauses),
        # The rate's curve on the monotonic clock (the server's arrivals are on it too).
        "rates": [(started + stamp - clock, rate) for stamp, rate in sorted(rates)],
    }


def server_counts(base: str, path: str) -> dict[str, Any]:
    return dict(httpx.get(base + path, timeout=10).json())


HEADER = (
    f"  {'mode':<8} {'right':>9} {'429s':>5} {'503s':>5} {'pauses':>6} {'of quota':>9} "
    f"{'wall':>7} {'/q-ideal':>8} {'/l-ideal':>8} {'1st req':>8} {'sending/l-ideal':>15}"
)


def report(mode: str, args: argparse.Namespace, outcome: dict[str, float], counts: Any) -> None:
    """One line: what the server answered, and the wall time against the ideals. The
    ideals are ``(items - 1) / rate``: at the quota, and at the limit; "1st req" is the
    time to the first accepted request (process mode: starting the workers), "sending"
    the span from the first accepted request to the last."""
    wall = outcome["wall"]
    quota_ideal = (args.items - 1) / args.quota
    limit_ideal = (args.items - 1) / args.limit
    sending = counts["last"] - counts["first"]
    print(
        f"  {mode:<8} {outcome['right']:>4.0f}/{args.items:<4} {counts['throttled']:>5.0f} "
        f"{counts['flaky']:>5.0f} {outcome['pauses']:>6.0f} "
        f"{args.items / wall / args.quota:>9.1%} {wall:>6.2f}s {wall / quota_ideal:>7.2f}x "
        f"{wall / limit_ideal:>7.2f}x {counts['first'] - outcome['started']:>7.2f}s "
        f"{sending / limit_ideal:>14.2f}x"
    )


def quota_at(args: argparse.Namespace, since_first: float) -> int:
    changed = args.change_to and since_first >= args.change_at
    return int(args.change_to) if changed else int(args.quota)


def accepted_share(
    args: argparse.Namespace,
    arrivals: list[tuple[float, int]],
    first: float,
    span: tuple[float, float],
) -> tuple[float, int, int]:
    """Within `span` (seconds since the first request): accepted requests as a share of
    what the quota allowed then, requests answered 429, and all requests."""
    start, end = span
    inside = [status for at, status in arrivals if start <= at - first < end]
    steps = range(int(start * 100), int(end * 100))
    allowed = sum(quota_at(args, t / 100) for t in steps) / 100
    accepted = sum(status == 200 for status in inside)
    throttled = sum(status == 429 for status in inside)
    return accepted / max(allowed, 1e-9), throttled, len(inside)


def report_window(args: argparse.Namespace, outcome: dict[str, Any], counts: Any) -> str:
    """The first `--seconds` after the first request (finding the quota and following
    its change included); then each quota's settled part: from `--settle` seconds after
    it took effect to its end (the change, or the last request), where the goal is read."""
    arrivals = counts["arrivals"]
    if not arrivals:
        return "no requests"
    first, last = arrivals[0][0], arrivals[-1][0]
    share, throttled, requests = accepted_share(args, arrivals, first, (0.0, args.seconds))
    lines = [
        f"first {args.seconds:g}s: {share:.1%} of the quota, {throttled / max(1, requests):.1%}"
        f" answered 429 ({throttled}/{requests}), items right {outcome['right']:.0f}/{args.items}"
    ]
    phases = [(0.0, args.change_at if args.change_to else last - first)]
    if args.change_to and last - first > args.change_at:
        phases.append((args.change_at, last - first))
    for start, end in phases:
        if end - start <= args.settle:
            continue
        span = (start + args.settle, end)
        share, throttled, requests = accepted_share(args, arrivals, first, span)
        lines.append(
            f"settled {span[0]:g}-{span[1]:.0f}s at {quota_at(args, start):d}/s: {share:.1%} of"
            f" the quota, {throttled / max(1, requests):.1%} answered 429 ({throttled}/{requests})"
        )
    return "\n           ".join(lines)


def plot(path: str, curves: dict[str, Any], args: argparse.Namespace) -> None:
    """The rate over time per mode, against the quota (matplotlib, only with --plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5))
    length = max(end for _, _, end in curves.values())
    seconds = [t / 10 for t in range(int(length * 10) + 1)]
    axes.step(seconds, [quota_at(args, t) for t in seconds], "k--", where="post", label="quota")
    for mode, (first, rates, _) in curves.items():
        points = [(at - first, rate) for at, rate in rates if 0 <= at - first <= length]
        axes.step(*zip(*points, strict=True), where="post", label=f"rate ({mode})")
    axes.set(xlabel="seconds since the first request", ylabel="attempts per second")
    axes.set_title(f'rate_limit="auto", {args.workers} workers, quota changed mid-run')
    axes.legend()
    figure.savefig(path, dpi=110, bbox_inches="tight")


def run_all(args: argparse.Namespace, base: str) -> None:
    """Every mode, `--runs` times, against the server at `base`; then the plot."""
    limit = "'auto'" if args.auto else f"{args.limit:g}"
    change_to = f" -> {args.change_to}/s at {args.change_at:g}s" if args.change_to else ""
    print(
        f"quota {args.quota}/s{change_to} rolling, rate_limit={limit}, {args.items} items, "
        f"{args.workers} workers, flaky 503 {args.flaky:.0%}, "
        f"backpressure {'off' if args.no_backpressure else 'on'}"
    )
    print(HEADER)
    curves: dict[str, Any] = {}
    for _ in range(args.runs):
        for mode in args.modes.split(","):
            server_counts(base, "/reset")
            outcome = run_mode(mode, args, base)
            counts = server_counts(base, "/stats")
            report(mode, args, outcome, counts)
            print(f"           {report_window(args, outcome, counts)}")
            if counts["arrivals"]:
                first, last = counts["arrivals"][0][0], counts["arrivals"][-1][0]
                curves[mode] = (first, outcome["rates"], last - first)
    if args.plot:
        plot(args.plot, curves, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--modes", default="thread,async,process")
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--quota", type=int, default=40, help="requests per rolling second")
    parser.add_argument("--limit", type=float, default=None, help="rate_limit (0.75 * quota)")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--flaky", type=float, default=0.0, help="503 share of primary")
    parser.add_argument("--flaky-retry-after", action="store_true")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--auto", action="store_true", help='rate_limit="auto"')
    parser.add_argument("--limit-max", type=float, default=None, help="rate_limit_max (auto)")
    parser.add_argument("--algorithm", default=None, help="auto: cubic or aimd")
    parser.add_argument("--burst", type=int, default=1, help="rate_limit_burst")
    parser.add_argument("--change-to", type=int, default=0, help="quota after --change-at")
    parser.add_argument("--change-at", type=float, default=5.0, help="seconds after the first")
    parser.add_argument("--seconds", type=float, default=10.0, help="the first window reported")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to settle a quota")
    parser.add_argument("--plot", default=None, help="save the rate over time (matplotlib)")
    parser.add_argument(
        "--no-backpressure", action="store_true", help="rate_limit_backpressure=False"
    )
    args = parser.parse_args(argv)
    change = (args.change_to, args.change_at)
    if args.serve:
        asyncio.run(serve(args.quota, args.flaky, args.flaky_retry_after, change))
        return 0
    if args.algorithm:  # read when the limit is built, and pickled into worker processes
        from opero._policies import adaptive

        adaptive.DEFAULT_ALGORITHM = args.algorithm
    args.limit = args.limit or 0.75 * args.quota
    server, base = start_server(args)
    try:
        run_all(args, base)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
