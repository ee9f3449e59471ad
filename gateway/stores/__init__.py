"""Time-series store back ends (gateway/timeseries.py is the interface they implement).

Each back end is its own module, imported only when configured, so the gateway does not
load a database client it does not use.
"""
