"""What crosses a process boundary in heatwatch.

Topics, payload models, the register-map schema, the canonical point vocabulary, the error tree
and config loading. Pure: nothing here opens a socket or a database. gateway/, collector/ and
api/ import this package and never each other.
"""
