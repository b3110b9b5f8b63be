"""The threads each gunicorn worker runs beside its web threads: the task runner, the
webhook dispatcher and the schedule clock (all coordinated through the task store)."""
