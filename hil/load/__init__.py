"""Fleet load: many virtual devices against the broker under test, measured from outside."""
