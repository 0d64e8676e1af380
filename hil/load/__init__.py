"""Fleet load: many virtual devices against the broker under test, measured from outside.

`run` drives a load run phase by phase; `target` is where the fleet and the collector
connect, `fleet` the ``hil sim fleet`` process, `collector` the subscriber that records
what arrives, `results` the measurements and their arithmetic, `errors` the two errors."""
