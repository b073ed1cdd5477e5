"""The sniffer stage: capture HTTP requests at the gateway and publish RequestEvent batches."""
