"""Root conftest: this repository's own pytest plugins (the meta-suite's table, the measurements section)."""

# The framework's plugin (hil.pytest_plugin) loads through its pytest11 entry point, as it
# does in any repository that installs hil; these are this repository's own additions.
pytest_plugins = ["pytester", "tests.meta.table", "tests.measurements"]
