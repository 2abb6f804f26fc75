"""MQTT for every heatwatch process: one client module (``messaging.client``) and the broker
identities and TLS of a site (``messaging.security``).

May import ``contract``; never a stage (gateway, collector, api, simulator).
"""
