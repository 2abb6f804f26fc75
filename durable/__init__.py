"""Durable storage shared by the stages: the on-disk FIFO behind the gateway outbox and collector spool."""
