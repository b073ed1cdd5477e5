"""Launchers for the real services heatcache needs on one machine: Kafka, MariaDB, aria2c."""
