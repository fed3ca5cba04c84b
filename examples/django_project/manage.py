#!/usr/bin/env python
"""A Django API protected by keystile.

    pip install keystile django
    cd examples/django_project
    keystile keys create --account acct_1 --name "my laptop" -p "jobs:*"   # prints a token once
    python manage.py runserver
    curl localhost:8000/jobs -H "Authorization: Bearer <token>"
"""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleproj.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
