"""The takeover report's settings (``kind: report``, e.g. ``deploy/api/report.yaml``): the company's
name for the headings, the rule file (season, design outdoor temperature, make-up limits), the
gateway configs (expected sample rates, remotely controllable valves) and the refund bands.
Pure: ``contract.config.load_config`` reads the file."""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RefundBand(_Strict):
    """Households whose room stayed this far below the standard for longer than
    ``refund_after_h`` (Tianjin: ≤ 2 K 10 %, 2–6 K 50 %, > 6 K 100 %)."""

    name: str = Field(min_length=1, max_length=40)
    above_k: float = Field(ge=0, description="shortfall greater than this (K below the standard)")
    up_to_k: float | None = Field(None, gt=0, description="and at most this; None: no upper bound")
    refund_pct: float = Field(ge=0, le=100)

    @model_validator(mode="after")
    def _order(self) -> RefundBand:
        if self.up_to_k is not None and self.up_to_k <= self.above_k:
            raise ValueError("up_to_k must be above above_k")
        return self


class ReportSettings(_Strict):
    kind: Literal["report"] = "report"
    company: str = Field("heatwatch", min_length=1, max_length=200, description="the PDF's heading")
    rules: str | None = Field(None, description="the alerter's rule file: season, design outdoor "
                                                "temperature, make-up limits; relative to this file")
    gateways: list[str] = Field(default_factory=list,
                                description="gateway configs (globs, relative to this file): expected "
                                            "sample rates and remotely controllable building valves")
    refund_bands: list[RefundBand] = Field(default_factory=list)
    refund_after_h: float = Field(24.0, gt=0, description="a low room counts for refunds after this long")
    longest_n: int = Field(20, ge=1, le=500, description="households below the standard longest: how many")
    rollups: Literal["auto", "off"] = Field(
        "auto", description="auto: read the 1-hour rollup `heatwatch influx setup` keeps wherever it covers "
                            "the period (seconds for a season of 500 stations, where the raw data takes "
                            "minutes); off: aggregate the raw data (a check, or a rollup not trusted)")

    @model_validator(mode="after")
    def _bands(self) -> ReportSettings:
        bands = sorted(self.refund_bands, key=lambda b: b.above_k)
        for a, b in itertools.pairwise(bands):
            if a.up_to_k is None or a.up_to_k > b.above_k:
                raise ValueError(f"refund_bands: {a.name!r} overlaps {b.name!r}")
        return self
