"""A room's last 24 hours for the hotline screen: 30-minute means of one room sensor.

This is the seam for the rollups: today one small InfluxDB query over the raw readings, the
means computed by InfluxDB (``GROUP BY time(30m)``: at most 49 rows cross the wire, whatever the
sensor's rate). When the site's 5-minute / 1-hour rollups exist (retention policies and
continuous queries, deployed with the site), ``RoomHistory`` reads the rollup measurement
instead and nothing else changes: the lookup only calls ``last_24h``.
"""

from __future__ import annotations

from api.influx import InfluxReader
from contract.influx import MEASUREMENT_HOUSEHOLD

BUCKET = "30m"
_QUERY = (f'SELECT mean("room_temp") FROM "{MEASUREMENT_HOUSEHOLD}" WHERE "station" = $station '
          f'AND "building" = $building AND "household" = $household AND time > now() - 24h '
          f"GROUP BY time({BUCKET}) fill(none)")


class RoomHistory:
    def __init__(self, influx: InfluxReader) -> None:
        self.influx = influx

    async def last_24h(self, station: str, building: str, household: str) -> list[tuple[int, float]]:
        """Clock-aligned 30-minute means (ms, °C), oldest first; [] when the sensor sent nothing."""
        series = await self.influx.query(_QUERY, {"station": station, "building": building,
                                                  "household": household})
        return [(int(t), round(float(v), 2)) for t, v in (series[0]["values"] if series else [])
                if v is not None]
