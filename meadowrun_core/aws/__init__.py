"""The AWS backend's seams: SQS task queues, S3 object store, DynamoDB allocation table.

Only the seams are built so far; the EC2 instance provider, SSH transport and installer are
not (see README, "Not built yet").
"""
