//! Provider: kube.
