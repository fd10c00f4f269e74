//! Emulated Tanzu Mission Control REST API with the CSP token exchange.
