"""Local runner and EM simulator for the cloud failover notifier."""
