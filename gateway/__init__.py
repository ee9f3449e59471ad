"""The collection center's gateway (ingest, storage, batches, alerts): next issue."""
