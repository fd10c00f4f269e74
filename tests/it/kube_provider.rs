//! Integration tests: kube_provider.
