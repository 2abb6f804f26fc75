"""Synthetic gateways for load and fault tests: telemetry at a controlled rate, checkable later.

Each simulated gateway is one MQTT client (QoS 1, persistent session, like the real gateway)
publishing for its stations. A message's values are a pure function of (station, seq, point),
so a test or benchmark can recompute what InfluxDB must hold without keeping a copy.

Shape of a station message (the DOMAIN.md figure of ~200 values per station every 10 s):
``station_points`` station values, ``buildings`` × ``building_points`` building values and
``households`` room temperatures — by default 150 + 5 × 6 + 20 = 200 values in 26 lines.

    python -m heatwatch.loadgen --port 11883 --gateways 10 --stations 500 --rate 1500 --seconds 30
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contract import topics


@dataclass(frozen=True)
class Shape:
    station_points: int = 150
    buildings: int = 5
    building_points: int = 6
    households: int = 20

    @property
    def values(self) -> int:
        return self.station_points + self.buildings * self.building_points + self.households


def station_name(i: int) -> str:
    return f"ld{i:05d}"


def value(station: int, seq: int, point: int) -> float:
    """The value of one point in one message: deterministic, two decimals, varied."""
    return ((station * 7919 + seq * 31 + point * 17) % 100_000) / 100


def _fragments(shape: Shape) -> list[str]:
    """The fixed JSON text of each reading up to its value (a message is built by joining)."""
    out = [f'{{"point":"x_p{p:03d}","unit":"","value":' for p in range(shape.station_points)]
    out += [f'{{"point":"x_b{p:02d}","building":"b{b:02d}","unit":"","value":'
            for b in range(shape.buildings) for p in range(shape.building_points)]
    for h in range(shape.households):
        b = h % max(shape.buildings, 1)
        out.append(f'{{"point":"room_temp","building":"b{b:02d}","household":"b{b:02d}-{h:04d}",'
                   f'"unit":"°C","value":')
    return out


_FRAGMENTS: dict[Shape, list[str]] = {}


def expected(shape: Shape, station: int, seq: int) -> list[float]:
    """Every value of one message, in reading order."""
    n = shape.values
    vals = [value(station, seq, k) for k in range(n)]
    first = n - shape.households
    for k in range(first, n):
        # rooms: 18.6–22.6 °C, except the first building of every 10th station, which is cold
        # (14.5–16.5 °C): a realistic share of alerts for the rule engine, not a storm
        cold = station % 10 == 0 and (k - first) % max(shape.buildings, 1) == 0
        vals[k] = round((14.5 + vals[k] % 2) if cold else (18.6 + vals[k] % 4), 2)
    return vals


def message(shape: Shape, station: int, gateway: str, boot: str, seq: int, ts: int) -> bytes:
    # string-built (~60 µs) rather than orjson over 200 dicts (~160 µs): the generator must not
    # take the CPU the benchmark measures
    frags = _FRAGMENTS.get(shape) or _FRAGMENTS.setdefault(shape, _fragments(shape))
    body = ",".join(f"{f}{v!r}}}" for f, v in zip(frags, expected(shape, station, seq), strict=True))
    return (f'{{"schema":1,"station":"{station_name(station)}","gateway":"{gateway}","boot":"{boot}",'
            f'"seq":{seq},"ts":{ts},"values":[{body}]}}').encode()


@dataclass
class Counters:
    published: int = 0
    acked: int = 0
    first_ts: int = 0
    last_ts: int = 0
    sent: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # station → [(seq, ts)]


class LoadGen:
    """``gateways`` clients sharing ``stations`` round-robin; ``rate`` messages/s in total."""

    def __init__(self, port: int, *, gateways: int = 1, stations: int = 10, rate: float = 10,
                 shape: Shape = Shape(), host: str = "127.0.0.1", record: bool = True,
                 first_station: int = 0, fixed_values: bool = False) -> None:
        self.fixed_values = fixed_values  # every message of a station carries seq 0's values
        self.port, self.host, self.rate, self.shape, self.record = port, host, rate, shape, record
        self.stations = list(range(first_station, first_station + stations))
        self.boot = uuid.uuid4().hex[:16]
        self.c = Counters()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.names = [f"loadgen-{first_station}-{g}" for g in range(gateways)]
        self.clients = [self._client(name) for name in self.names]
        self._seq = dict.fromkeys(self.stations, 0)
        self._bodies: dict[int, bytes] = {}

    def _client(self, name: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, clean_session=False)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)  # paho keeps what it could not send yet; we cap ourselves

        def on_publish(*_: object) -> None:
            with self._lock:
                self.c.acked += 1

        c.on_publish = on_publish
        c.reconnect_delay_set(1, 2)
        c.connect_async(self.host, self.port, keepalive=10)
        c.loop_start()
        return c

    def run(self, seconds: float, *, max_outstanding: int = 20_000) -> None:
        """Publish for ``seconds`` at the rate; blocks. Stop early with ``stop()``."""
        interval = 1 / self.rate
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            due = start + n * interval
            now = time.monotonic()
            if due - start >= seconds:
                break
            if due > now:
                time.sleep(due - now)
            if self.c.published - self.c.acked >= max_outstanding:  # broker gone for long: wait
                time.sleep(0.01)
                continue
            st = self.stations[n % len(self.stations)]
            client, gw = self.clients[n % len(self.clients)], self.names[n % len(self.names)]
            seq = self._seq[st]
            self._seq[st] = seq + 1
            ts = int(time.time() * 1000)
            if self.fixed_values:  # cheap: the cached seq-0 body with this seq and ts
                body = self._bodies.get(st) or self._bodies.setdefault(
                    st, message(self.shape, st, gw, self.boot, 0, 0).split(b',"values":', 1)[1])
                payload = (f'{{"schema":1,"station":"{station_name(st)}","gateway":"{gw}",'
                           f'"boot":"{self.boot}","seq":{seq},"ts":{ts},"values":').encode() + body
            else:
                payload = message(self.shape, st, gw, self.boot, seq, ts)
            client.publish(str(topics.telemetry(station_name(st))), payload, qos=1)
            with self._lock:
                self.c.published += 1
            self.c.first_ts = self.c.first_ts or ts
            self.c.last_ts = ts
            if self.record:
                self.c.sent.setdefault(st, []).append((seq, ts))
            n += 1

    def wait_acked(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.c.acked >= self.c.published:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m heatwatch.loadgen", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--gateways", type=int, default=10)
    ap.add_argument("--stations", type=int, default=100)
    ap.add_argument("--first-station", type=int, default=0)
    ap.add_argument("--rate", type=float, default=100, help="messages per second in total")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--fixed-values", action="store_true",
                    help="repeat each station's first values (cheaper to generate; for benchmarks)")
    a = ap.parse_args(argv)
    gen = LoadGen(a.port, host=a.host, gateways=a.gateways, stations=a.stations, rate=a.rate,
                  record=False, first_station=a.first_station, fixed_values=a.fixed_values)
    t0 = time.monotonic()
    gen.run(a.seconds)
    took = time.monotonic() - t0
    ok = gen.wait_acked(120)
    gen.close()
    print(orjson.dumps({"published": gen.c.published, "acked": gen.c.acked, "seconds": round(took, 3),
                        "values": gen.c.published * gen.shape.values, "first_ts": gen.c.first_ts,
                        "last_ts": gen.c.last_ts}).decode())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
