"""Alert rules, their state machine and the alert store; used by the collector and the API."""
