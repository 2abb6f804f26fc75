"""MQTT for every heatwatch process: one client module (``messaging.client``).

May import ``contract``; never a stage (gateway, collector, api, simulator).
"""
