"""`probe serve`: the scheduler, the state between scrapes, the exporter, the vantage process."""
