"""Django management commands: ``python manage.py keystile``."""
