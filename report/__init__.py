"""The takeover report (issue #17): per station and per company, for any period, does each
station meet the make-up water, room temperature, information-management and remote-control
requirements, and how did the dispatch room serve it.

- ``report.model``: what the report says (pydantic models; the API's JSON) and its settings;
- ``report.compute``: the figures, pure: from hourly aggregates and alert-store rows;
- ``report.source``: the I/O beside it: InfluxQL with server-side aggregation, store reads;
- ``report.xlsx`` / ``report.pdf``: the spreadsheet (one sheet per part) and the printable PDF.

Imports contract and alerting (the store's schema), never a stage: the API and the
``heatwatch report`` command both use it.
"""
