"""A heat-exchange-station simulator served over real Modbus TCP (pymodbus's own server).

Each station's registers are laid out by the same gateway config and register maps that the
gateway reads, so what the simulator serves and what the gateway decodes are checked against
one definition. Values follow the physics in :mod:`simulator.physics`; events (leak, cold
building, stuck sensor, dead PLC …) are scripted by a scenario file or called from tests.
"""
