"""Celery workers: thin tasks that take ids and call ``backend`` services."""
