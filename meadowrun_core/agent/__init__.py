"""The instance agent: one long-lived process per instance that runs jobs for clients,
reconciles its allocations and terminates itself when idle."""
