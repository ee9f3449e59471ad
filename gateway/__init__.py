"""The collection center's gateway: MQTT ingest exactly once into SQLite or InfluxDB, the
metadata database (nodes, batches, thresholds, alerts, audit) and the HTTP API."""
