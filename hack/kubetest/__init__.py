"""Test harness: a real local Kubernetes control plane (see hack/README.md)."""
