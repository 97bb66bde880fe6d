"""Prefect orchestration of the VIPER stages (flows, deployments). Nothing numerical lives here."""

# Prefect reads its settings (home, analytics) when first imported: viper's runtime environment (project-local
# PREFECT_HOME, analytics off, ...) must be in place before any module here imports it.
import viper  # noqa: F401
