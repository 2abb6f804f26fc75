"""What every heatwatch process shares to talk MQTT: the broker identities and TLS of a site
(``messaging.security``)."""
