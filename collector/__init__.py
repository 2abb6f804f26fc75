"""The collector: receive → validate → line protocol → write InfluxDB → acknowledge.

Takes the MQTT stream of every station, validates each message against the contract, writes
it to InfluxDB, and only then sends the PUBACK, so a message the collector has not stored is
still the broker's to redeliver.
"""
