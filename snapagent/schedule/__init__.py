"""Schedules: systemd ``OnCalendar`` expressions, timer/cron unit generation."""
