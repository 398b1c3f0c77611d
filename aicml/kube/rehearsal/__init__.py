"""`make k8s-rehearsal`: the Kubernetes platform rehearsed on one machine with podman, no API server.

The image is built for real, each rendered workload runs as a container with its pod's command, env, user,
volumes and Service aliases, and a flow run's Job (rendered by prefect-kubernetes from our base job
template) runs as a container too.
"""
