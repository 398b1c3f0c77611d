"""The platform on Kubernetes: render the kustomize overlays in `k8s/`, validate them offline, apply and verify.

Nothing here talks to a cluster unless `apply` or `verify` is called; rendering needs only `kubectl`.
"""
