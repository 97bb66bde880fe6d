"""Prefect orchestration of the VIPER stages (flows, deployments). Nothing numerical lives here."""
