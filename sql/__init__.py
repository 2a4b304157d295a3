# The numbered migrations; installed as the package `reconciler.sql` (see pyproject.toml).
