"""``python manage.py keystile``: see :mod:`keystile.django.management.commands.keystile`."""
