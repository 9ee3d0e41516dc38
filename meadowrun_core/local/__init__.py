"""The embedded local cloud: SQLite tables, a file object store and agent processes on this
machine, behind the same seams as AWS and Azure."""
