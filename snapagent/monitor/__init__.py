"""Monitoring: the record of each backup run (``runs``), what is known of a job (``facts``), the
Nagios check (``check``), the Prometheus textfile (``metrics``), healthchecks-style pings (``ping``)
and the hook around a run that ties them together (``watch``)."""
