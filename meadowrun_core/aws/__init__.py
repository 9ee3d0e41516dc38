"""The AWS backend, one module per seam: SQS task queues, S3 object store, DynamoDB allocation
table, and choosing and launching the cheapest fitting EC2 instance types (prices, spot
interruption buckets, capacity fallback).

Not built yet: wiring these into a host (``AllocEC2Instance``), the SSH transport, the
on-instance agent bootstrap and the installer (see README, "Not built yet").
"""
