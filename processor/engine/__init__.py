"""The engine: pre-filter, fact batches, durable-rules in local workers or on Dask, decisions."""
