"""A Django project for the tests: settings configured once per process, in-memory database."""
