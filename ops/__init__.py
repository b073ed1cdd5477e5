"""Operations as code: the Kubernetes topic set, Grafana dashboards and Prometheus alert rules.

Everything here is derived from the project's own code (contract topics, settings, the streams
app's Faust topics, the stages' metrics), so the manifests cannot drift from what runs.
"""
