"""The collection center's gateway: MQTT ingest exactly once into SQLite or InfluxDB (batches,
alerts, threshold push and the HTTP API are still to come, see issue 3)."""
