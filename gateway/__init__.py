"""The gateway: poll → decode → check → envelope → outbox → publish.

Runs unattended on a station's edge box: reads the station's Modbus devices per poll group,
turns the registers into canonical readings with a quality flag, writes each telemetry message
to a durable SQLite outbox, and publishes from the outbox at QoS 1, deleting a message only
when the broker's PUBACK for it arrives.
"""
