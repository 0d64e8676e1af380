"""Root conftest: loads the project's pytest plugin so every test sees the same fixtures."""

pytest_plugins = ["fixtures.plugin", "pytester", "tests.meta.table", "tests.measurements"]
